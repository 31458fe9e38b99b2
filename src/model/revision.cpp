#include "model/revision.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace md {

bool parse_revision_choice(const std::string& s, RevisionChoice* out) {
  if (s == "auto")
    *out = RevisionChoice::kAuto;
  else if (s == "2025-01-09" || s == "2025-04-14" || s == "gpt2")
    *out = RevisionChoice::kGpt2;
  else if (s == "2025-06-21" || s == "starmie")
    *out = RevisionChoice::kStarmie;
  else
    return false;
  return true;
}

TokenizerConfig RevisionProfile::default_tokens(TokenizerFamily f) {
  TokenizerConfig t;  // the GPT-2 era defaults
  if (f == TokenizerFamily::kGpt2) return t;
  // docs/MODEL.md sections R1-R2 (revision 2025-06-21).
  t.bos_id = 0;
  t.eos_id = 0;
  t.answer_id = 3;
  t.thinking_id = 4;
  t.coord_id = 5;
  t.size_id = 6;
  t.start_ground_points_id = 7;
  t.end_ground_id = 9;
  t.caption_short = {1, 32708, 2, 12492, 3};
  t.caption_normal = {1, 32708, 2, 6382, 3};
  t.caption_long = {1, 32708, 2, 4059, 3};
  t.query_prefix = {1, 15381, 2};
  t.query_suffix = {3};
  t.detect_prefix = {1, 7235, 476, 2};
  t.detect_suffix = {3};
  t.point_prefix = {1, 2581, 2};
  t.point_suffix = {3};
  return t;
}

RevisionProfile RevisionProfile::for_family(TokenizerFamily f) {
  RevisionProfile p;
  if (f == TokenizerFamily::kGpt2) return p;
  p.family = f;
  p.name = "2025-06-21";
  p.tokenizer_repo = kStarmieRepo;
  p.question_leading_space = false;
  p.ban_answer_after_first = true;
  p.reasoning = true;
  p.spatial_refs = true;
  p.text_only = true;
  p.gaze = GazeMethod::kPointWithSpatialRef;
  return p;
}

RevisionProfile detect_revision(const std::string& model_dir, std::optional<int> config_bos_id, RevisionChoice choice) {
  if (choice != RevisionChoice::kAuto) {
    RevisionProfile p = RevisionProfile::for_family(choice == RevisionChoice::kStarmie ? TokenizerFamily::kStarmie
                                                                                       : TokenizerFamily::kGpt2);
    p.detected_by = "chosen by the user (revision_profile " + p.name + ")";
    return p;
  }
  if (!model_dir.empty()) {
    const std::filesystem::path code = std::filesystem::path(model_dir) / "moondream.py";
    std::ifstream f(code, std::ios::binary);
    if (f) {
      std::ostringstream ss;
      ss << f.rdbuf();
      if (ss.str().find(kStarmieRepo) != std::string::npos) {
        RevisionProfile p = RevisionProfile::for_family(TokenizerFamily::kStarmie);
        p.detected_by = code.string() + " names " + kStarmieRepo;
        return p;
      }
    }
  }
  if (config_bos_id && *config_bos_id == 0) {
    RevisionProfile p = RevisionProfile::for_family(TokenizerFamily::kStarmie);
    p.detected_by = "config.json tokenizer.bos_id is 0";
    return p;
  }
  return RevisionProfile::for_family(TokenizerFamily::kGpt2);
}

}  // namespace md
