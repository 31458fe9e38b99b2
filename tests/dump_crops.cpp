// dump_crops IMAGE OUT_PREFIX [--max-crops N]
// Writes OUT_PREFIX.u8 (raw uint8 crops, [count, crop, crop, 3], crop 0 is
// the global one) and OUT_PREFIX.json ({"rows","cols","count","width",
// "height"}; width/height of the decoded, orientation-corrected image).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>

#include "model/image.h"
#include "tensor/error.h"

int main(int argc, char** argv) {
  std::string image_path, prefix;
  md::CropParams params;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--max-crops" && i + 1 < argc) {
      char* end = nullptr;
      long v = std::strtol(argv[++i], &end, 10);
      if (!end || *end || v < 1 || v > 1000) {
        std::cerr << "dump_crops: --max-crops wants a positive integer\n";
        return 2;
      }
      params.max_crops = int(v);
    } else if (image_path.empty()) {
      image_path = a;
    } else if (prefix.empty()) {
      prefix = a;
    } else {
      image_path.clear();
      break;
    }
  }
  if (image_path.empty() || prefix.empty()) {
    std::cerr << "usage: dump_crops IMAGE OUT_PREFIX [--max-crops N]\n";
    return 2;
  }
  try {
    md::RgbImage img = md::load_image_file(image_path);
    md::Crops crops = md::make_crops(img, params);
    {
      std::ofstream f(prefix + ".u8", std::ios::binary);
      f.write(reinterpret_cast<const char*>(crops.pixels.data()), std::streamsize(crops.pixels.size()));
      if (!f) throw md::Error("dump_crops: cannot write " + prefix + ".u8");
    }
    {
      std::ofstream f(prefix + ".json");
      f << "{\"rows\": " << crops.tiling.rows << ", \"cols\": " << crops.tiling.cols << ", \"count\": " << crops.count
        << ", \"width\": " << img.width << ", \"height\": " << img.height << "}\n";
      if (!f) throw md::Error("dump_crops: cannot write " + prefix + ".json");
    }
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
