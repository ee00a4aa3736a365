#include "stlpips/scorer.h"

namespace stlpips {

std::vector<float> Scorer::score(const Tensor& in0, const Tensor& in1) {
  info_.check_inputs(in0, in1);
  return run(in0, in1);
}

}  // namespace stlpips
