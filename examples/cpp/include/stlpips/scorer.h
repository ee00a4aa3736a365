// Scoring image pairs with an exported stlpips .onnx file. Drop this header and its sources into a host:
//
//   stlpips::OnnxRuntimeScorer scorer("models/stlpips_alex_st.onnx");
//   std::vector<float> d = scorer.score(stlpips::load_image("a.png"), stlpips::load_image("b.png"));
//
// Everything model-specific (input range, minimum size, output names, variant) is read from the file's
// metadata; inputs are checked against it before the graph runs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "stlpips/model_info.h"

namespace stlpips {

// Engine-independent part: holds the model's metadata and checks inputs; engines implement run().
class Scorer {
 public:
  virtual ~Scorer() = default;
  Scorer(const Scorer&) = delete;
  Scorer& operator=(const Scorer&) = delete;

  const ModelInfo& info() const { return info_; }

  // Distances dist[N] between in0 [N0,3,H,W] and in1 [N1,3,H,W] (float32 RGB in [-1, 1]; N = max(N0, N1),
  // N0 == N1 or one of them 1). Throws Error if the inputs break the model's contract.
  std::vector<float> score(const Tensor& in0, const Tensor& in1);

  // The engine's name, for messages ("onnxruntime", "openvino").
  virtual std::string engine() const = 0;

 protected:
  Scorer() = default;
  // Throws Error naming the file when it does not exist or cannot be read (before an engine's own,
  // vaguer error).
  static void require_readable(const std::string& model_path);
  // Runs the graph on inputs that passed ModelInfo::check_inputs; returns the "dist" output.
  virtual std::vector<float> run(const Tensor& in0, const Tensor& in1) = 0;

  ModelInfo info_;
};

struct OnnxRuntimeOptions {
  // Threads for one operator; 0 lets ONNX Runtime choose (one per physical core).
  int intra_op_threads = 0;
  // Library to load at run time, used only in a build with STLPIPS_ORT_LOAD_AT_RUNTIME. Empty: the
  // STLPIPS_ORT_LIBRARY environment variable, else the default fixed when the program was configured.
  std::string library;
};

// ONNX Runtime on the CPU execution provider.
class OnnxRuntimeScorer : public Scorer {
 public:
  explicit OnnxRuntimeScorer(const std::string& model_path, const OnnxRuntimeOptions& options = {});
  ~OnnxRuntimeScorer() override;
  std::string engine() const override { return "onnxruntime"; }

  // ONNX Runtime's version string, e.g. "1.31.1" (of the library actually loaded).
  static std::string runtime_version();

 protected:
  std::vector<float> run(const Tensor& in0, const Tensor& in1) override;

 private:
  struct Impl;  // keeps onnxruntime_cxx_api.h out of this header
  std::unique_ptr<Impl> impl_;
};

}  // namespace stlpips
