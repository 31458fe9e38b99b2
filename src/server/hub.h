#pragma once
// Model download from the Hugging Face hub into the hub's own cache layout, so
// that weights already fetched by the Python tools are reused by us and ours
// by them:
//
//   <cache>/models--<org>--<name>/
//     blobs/<etag>                    file contents, named by ETag (sha256 for
//                                     LFS files, git blob sha1 otherwise)
//     blobs/<etag>.incomplete         partial download, resumed with Range
//     snapshots/<commit>/<file>       relative symlink to ../../blobs/<etag>
//     refs/<revision>                 commit hash of a branch or tag (no newline)
//   <cache>/.locks/models--<org>--<name>/<etag>.lock   flock()ed while fetching
//
// Files come from GET {endpoint}/{repo}/resolve/{revision}/{file}; large files
// redirect to a CDN. The commit comes from X-Repo-Commit, the ETag from
// X-Linked-Etag or ETag, the size from X-Linked-Size or Content-Length.
// Errors are md::Error with a one-line message.
#include <string>
#include <string_view>
#include <vector>

namespace md {

struct HubOptions {
  std::string endpoint;   // empty: $HF_ENDPOINT, else https://huggingface.co
  std::string cache_dir;  // empty: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
  std::string token;      // empty: $HF_TOKEN, else the token file written by `huggingface-cli login`
                          // ($HF_TOKEN_PATH or $HF_HOME/token); sent as Authorization: Bearer
  bool offline = false;   // also on when $HF_HUB_OFFLINE is 1/true/yes/on
  bool progress = true;   // progress bar on stderr, only when stderr is a TTY
                          // ($HF_HUB_DISABLE_PROGRESS_BARS=1 turns it off)
  // Files of the model. A "*.safetensors" file may instead be sharded: when
  // "<file>.index.json" exists in the repo, it and every shard of its
  // weight_map are fetched instead.
  std::vector<std::string> files = {"config.json", "model.safetensors", "tokenizer.json"};
  // Fetched when the repo has them; a 404 is remembered in .no_exist/ (as
  // huggingface_hub does) and not asked again. moondream.py is the remote
  // code that tells a 2025-06-21 snapshot from the older ones.
  std::vector<std::string> optional_files = {"moondream.py"};
  long timeout_s = 30;  // connect timeout and idle (no bytes received) timeout
};

// Returns a local directory holding the model files.
//  - An existing directory is returned as is.
//  - Otherwise `model_path_or_repo` must be a hub repo id ("org/name"). When
//    refs/<revision> (or snapshots/<revision> for a commit hash) already holds
//    every file, that snapshot is returned without any network access: a
//    second start never downloads. Offline mode returns the cached snapshot or
//    fails naming what is missing. Otherwise the missing files are downloaded
//    (partial blobs are resumed; size and sha256 ETags are verified before a
//    blob is published) and the snapshot directory is returned.
// `revision` empty means "main".
std::string resolve_model(const std::string& model_path_or_repo, const std::string& revision,
                          const HubOptions& opts = {});

// Returns the path of a tokenizer.json: `path_or_repo` is a tokenizer.json
// file, a directory holding one, or a hub repo id whose tokenizer.json is
// found in (or downloaded to) the cache like a model's files. The error names
// every place it looked.
std::string resolve_tokenizer(const std::string& path_or_repo, const HubOptions& opts = {});

// The tokenizer.json a model directory needs (docs/MODEL.md section R1):
// `spec` (a path or repo the user gave) if set; else, for a revision whose
// tokenizer lives in its own hub repo (starmie), that repo through the cache;
// else "" (the directory's own tokenizer.json).
std::string tokenizer_for_model(const std::string& model_dir, const std::string& spec,
                                const std::string& revision_profile, const HubOptions& opts = {});

// True when `s` has the shape of a hub repo id: "name" or "org/name" made of
// letters, digits, '-', '_' and '.', not starting with '.' or '-'.
bool is_hub_repo_id(const std::string& s);

// The cache directory `opts` resolves to (see HubOptions::cache_dir).
std::string hub_cache_dir(const HubOptions& opts = {});

namespace hub_detail {
// Lower-case hex sha256 of `data` (exposed for tests).
std::string sha256_hex(std::string_view data);
}  // namespace hub_detail

}  // namespace md
