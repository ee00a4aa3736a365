#include "stlpips/openvino_scorer.h"


#include <openvino/openvino.hpp>

namespace stlpips {

struct OpenVinoScorer::Impl {
  ov::Core core;
  ov::CompiledModel compiled;
  ov::InferRequest request;
};

OpenVinoScorer::OpenVinoScorer(const std::string& model_path, const OpenVinoOptions& options)
    : impl_(std::make_unique<Impl>()) {
  require_readable(model_path);
  std::shared_ptr<ov::Model> model;
  std::map<std::string, std::string> metadata;
  try {
    model = impl_->core.read_model(model_path);
    // The ONNX frontend puts metadata_props under rt_info["framework"]; a model without any has no entry.
    if (model->has_rt_info("framework")) {
      for (const auto& [key, value] : model->get_rt_info<ov::AnyMap>("framework")) {
        metadata[key] = value.as<std::string>();
      }
    }
  } catch (const ov::Exception& e) {
    throw Error(model_path + ": OpenVINO cannot read it (" + e.what() + "); is it an .onnx file?");
  }
  info_ = ModelInfo::from_metadata(metadata, model_path);

  for (const char* name : {"in0", "in1"}) {
    bool found = false;
    for (const auto& input : model->inputs()) found = found || input.get_names().count(name) > 0;
    if (!found) throw Error(model_path + ": graph has no input '" + name + "'; re-export it");
  }
  try {
    impl_->compiled = impl_->core.compile_model(model, options.device,
                                                ov::hint::inference_precision(ov::element::f32));
    impl_->request = impl_->compiled.create_infer_request();
  } catch (const ov::Exception& e) {
    throw Error(model_path + ": OpenVINO cannot compile it for " + options.device + " (" + e.what() + ")");
  }
}

OpenVinoScorer::~OpenVinoScorer() = default;

std::string OpenVinoScorer::runtime_version() { return ov::get_openvino_version().buildNumber; }

std::vector<float> OpenVinoScorer::run(const Tensor& in0, const Tensor& in1) {
  try {
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"in0", &in0}, {"in1", &in1}}) {
      // Wraps the caller's buffer without copying; OpenVINO only reads input tensors.
      const ov::Shape shape(t->shape.begin(), t->shape.end());
      float* data = const_cast<float*>(t->data.data());
      impl_->request.set_tensor(name, ov::Tensor(ov::element::f32, shape, data));
    }
    impl_->request.infer();
    const ov::Tensor dist = impl_->request.get_tensor("dist");
    const float* values = dist.data<const float>();
    return std::vector<float>(values, values + dist.get_size());
  } catch (const ov::Exception& e) {
    throw Error(std::string("OpenVINO failed to run the model: ") + e.what());
  }
}

}  // namespace stlpips
