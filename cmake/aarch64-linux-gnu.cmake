# Cross build for aarch64 (arm64) with Debian's g++-aarch64-linux-gnu against
# the sysroot scripts/arm64-sysroot.sh makes (MOONDREAM_ARM64_SYSROOT, default
# build-arm64/sysroot). scripts/test-arm64.sh builds with it and runs the
# tests under qemu-aarch64.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
if(NOT MOONDREAM_ARM64_SYSROOT)
  set(MOONDREAM_ARM64_SYSROOT "${CMAKE_CURRENT_LIST_DIR}/../build-arm64/sysroot")
endif()
get_filename_component(MOONDREAM_ARM64_SYSROOT "${MOONDREAM_ARM64_SYSROOT}" ABSOLUTE)
set(CMAKE_SYSROOT "${MOONDREAM_ARM64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH "${MOONDREAM_ARM64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# The cross compiler's own libstdc++ and libgomp come from the sysroot
# (the versions the arm64 machine runs).
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${MOONDREAM_ARM64_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR}
    "${MOONDREAM_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${MOONDREAM_ARM64_SYSROOT}/usr/share/pkgconfig")
# Tests run through qemu (ctest and the tests that start the binaries).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L "${MOONDREAM_ARM64_SYSROOT}")
