#include "stlpips/scorer.h"

#include <fstream>

namespace stlpips {

void Scorer::require_readable(const std::string& model_path) {
  if (!std::ifstream(model_path).good()) {
    throw Error(model_path + ": model file does not exist or cannot be read; export one with " +
                "`stlpips-export`");
  }
}

std::vector<float> Scorer::score(const Tensor& in0, const Tensor& in1) {
  info_.check_inputs(in0, in1);
  return run(in0, in1);
}

}  // namespace stlpips
