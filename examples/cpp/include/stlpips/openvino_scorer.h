// The same .onnx file run by OpenVINO's C++ API (built with -DSTLPIPS_WITH_OPENVINO=ON), to show the file
// is not tied to ONNX Runtime. OpenVINO's ONNX frontend exposes metadata_props as the model's
// rt_info["framework"], so the metadata is read from the file here too.
#pragma once

#include <memory>
#include <string>

#include "stlpips/scorer.h"

namespace stlpips {

struct OpenVinoOptions {
  std::string device = "CPU";
  // Inference precision is pinned to float32: on CPUs with AMX or AVX512-BF16 OpenVINO otherwise picks
  // bf16 (measured on such a CPU: distances of random 64x64 pairs off by up to 2.6e-4, against <= 1.3e-7
  // in float32).
};

class OpenVinoScorer : public Scorer {
 public:
  explicit OpenVinoScorer(const std::string& model_path, const OpenVinoOptions& options = {});
  ~OpenVinoScorer() override;
  std::string engine() const override { return "openvino"; }

  static std::string runtime_version();

 protected:
  std::vector<float> run(const Tensor& in0, const Tensor& in1) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stlpips
