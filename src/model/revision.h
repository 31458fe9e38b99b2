#pragma once
// What a checkpoint's revision decides, in one place (docs/REVISIONS.md):
// the tokenizer it needs, its control-token ids and prompt templates, the
// tokens banned while answering, whether a question gets a leading space, and
// which skills (reasoning, spatial references, text-only questions, gaze) it
// has. Two families exist: the GPT-2 era (2025-01-09 .. 2025-04-14) and the
// starmie era (2025-06-21, tokenizer moondream/starmie-v1).
#include <optional>
#include <string>
#include <vector>

namespace md {

enum class TokenizerFamily { kGpt2, kStarmie };

// The user's say in the matter (CLI --revision-profile, config key
// "revision_profile"); kAuto detects it as docs/MODEL.md section R1 says.
enum class RevisionChoice { kAuto, kGpt2, kStarmie };
// "auto", "2025-01-09" (also "2025-04-14", "gpt2"), "2025-06-21" ("starmie").
bool parse_revision_choice(const std::string& s, RevisionChoice* out);

constexpr char kStarmieRepo[] = "moondream/starmie-v1";

// Token ids and prompt templates (config.json's inner "tokenizer" section
// overrides any of them). -1: the revision has no such token.
struct TokenizerConfig {
  int bos_id = 50256;
  int eos_id = 50256;
  int answer_id = -1;
  int thinking_id = -1;
  int coord_id = -1;
  int size_id = -1;
  int start_ground_points_id = -1;
  int end_ground_id = -1;
  std::vector<int> caption_short{198, 198, 16438, 8305, 25};
  std::vector<int> caption_normal{198, 198, 24334, 1159, 25};
  std::vector<int> caption_long{198, 198, 14617, 8305, 25};
  std::vector<int> query_prefix{198, 198, 24361, 25};
  std::vector<int> query_suffix{198, 198, 33706, 25};
  std::vector<int> detect_prefix{198, 198, 47504, 25};
  std::vector<int> detect_suffix{628};
  std::vector<int> point_prefix{198, 198, 12727, 25};
  std::vector<int> point_suffix{628};
};

enum class GazeMethod {
  kDetectGaze,           // older revisions: the official detect_gaze prompt ("\n\nPoint:", eye x/y, " gaze\n\n")
  kPointWithSpatialRef,  // starmie era: point "gaze" with the eye as a spatial reference
};

struct RevisionProfile {
  TokenizerFamily family = TokenizerFamily::kGpt2;
  std::string name = "2025-01-09";  // shown in /health as "revision_profile"
  std::string detected_by = "default (no sign of a later revision)";
  // The tokenizer's source: empty = the model directory's tokenizer.json,
  // else a hub repo whose tokenizer.json the model needs.
  std::string tokenizer_repo;
  bool question_leading_space = true;   // query: encode(" " + question)
  bool ban_answer_after_first = false;  // caption/query: answer id −∞ after the first token
  bool reasoning = false;
  bool spatial_refs = false;
  bool text_only = false;
  GazeMethod gaze = GazeMethod::kDetectGaze;

  static TokenizerConfig default_tokens(TokenizerFamily f);
  static RevisionProfile for_family(TokenizerFamily f);
};

// docs/MODEL.md section R1: the user's choice wins; else a model directory whose
// remote code (moondream.py) names moondream/starmie-v1, or whose config's
// tokenizer section says bos_id 0, is starmie-era; else GPT-2 era.
// `config_bos_id`: the bos_id config.json sets, if it sets one.
RevisionProfile detect_revision(const std::string& model_dir, std::optional<int> config_bos_id, RevisionChoice choice);

}  // namespace md
