// The stlpips ONNX contract (format 1) as seen from C++: what a host reads from a model's metadata_props
// and the checks it makes on a pair of input tensors before running the graph.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace stlpips {

// Every error the library raises: bad model files and bad inputs. The message says what was wrong
// and what to do about it.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A dense float32 NCHW tensor, row-major (the layout of the model inputs in0/in1).
struct Tensor {
  std::vector<int64_t> shape;  // {N, C, H, W}
  std::vector<float> data;

  int64_t batch() const { return shape.at(0); }
  int64_t height() const { return shape.at(2); }
  int64_t width() const { return shape.at(3); }
};

// Metadata of an stlpips model, validated against format 1 of the contract.
struct ModelInfo {
  static constexpr const char* kSupportedFormat = "1";

  std::string net;        // "alex" | "vgg"
  std::string variant;    // "st" | "lpips" | "aa" | "scratch"
  std::string precision;  // "fp32" | "fp16" (inputs and outputs are float32 either way)
  float range_lo = -1.0f;  // stlpips.input_range
  float range_hi = 1.0f;
  int64_t min_size = 1;              // smallest H and W the graph accepts
  int64_t static_height = 0;         // stlpips.static_hw of a model exported with fixed H and W, else 0
  int64_t static_width = 0;
  std::vector<std::string> outputs;  // stlpips.outputs, "dist" first or among them
  std::map<std::string, std::string> metadata;  // every metadata_props entry, stlpips.* and others

  // Validate the stlpips.* keys of `metadata`; `model` names the file in error messages.
  // Throws Error when the file is not an stlpips model or uses a format this code does not read.
  static ModelInfo from_metadata(const std::map<std::string, std::string>& metadata,
                                 const std::string& model);

  // Check a pair of inputs against the contract: 4-D float32 NCHW, 3 channels, equal H and W, both at least
  // min_size (and equal to static_hw where set), batch sizes equal or one of them 1. `name0` and `name1`
  // label the inputs in error messages.
  void check_inputs(const Tensor& in0, const Tensor& in1, const std::string& name0 = "in0",
                    const std::string& name1 = "in1") const;

  bool has_output(const std::string& name) const;
};

}  // namespace stlpips
