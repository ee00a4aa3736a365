// ONNX Runtime engine. The C++ API is initialised by hand (ORT_API_MANUAL_INIT, set by CMake) so that the
// same code either links libonnxruntime or loads it with dlopen at run time: the latter lets headers of one
// release drive a newer library (for example the one inside the onnxruntime Python wheel) without the
// versioned-symbol mismatch that linking across releases runs into.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <onnxruntime_cxx_api.h>

#include "stlpips/scorer.h"

#ifdef STLPIPS_ORT_LOAD_AT_RUNTIME
#include <dlfcn.h>
#endif

namespace stlpips {
namespace {

struct LoadedApi {
  const OrtApi* api = nullptr;
  std::string library;  // the path loaded at run time; empty when linked
  std::string version;
  std::string error;
};

const OrtApiBase* api_base(const std::string& requested_library, std::string& path) {
#ifdef STLPIPS_ORT_LOAD_AT_RUNTIME
  path = requested_library;
  const char* env = std::getenv("STLPIPS_ORT_LIBRARY");
  if (path.empty() && env != nullptr) path = env;
  if (path.empty()) path = STLPIPS_ORT_DEFAULT_LIBRARY;
  if (path.empty()) {
    throw Error(
        "no ONNX Runtime library to load: pass --ort-library PATH, set STLPIPS_ORT_LIBRARY, or configure "
        "with -DSTLPIPS_ORT_DEFAULT_LIBRARY=PATH (path of libonnxruntime.so)");
  }
  // Never closed: the library stays loaded for the life of the process, as a linked one would.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) throw Error("cannot load ONNX Runtime from " + path + ": " + dlerror());
  using GetApiBaseFn = const OrtApiBase* (*)();
  auto get_api_base = reinterpret_cast<GetApiBaseFn>(dlsym(handle, "OrtGetApiBase"));
  if (get_api_base == nullptr) throw Error(path + " exports no OrtGetApiBase: is it libonnxruntime?");
  return get_api_base();
#else
  (void)path;
  if (!requested_library.empty()) {
    throw Error("this build links ONNX Runtime; --ort-library needs -DSTLPIPS_ORT_LOAD_AT_RUNTIME=ON");
  }
  return OrtGetApiBase();
#endif
}

// Initialises the C++ API once per process: one process holds one ONNX Runtime.
const LoadedApi& init_api(const std::string& library) {
  static LoadedApi loaded;
  static std::once_flag once;
  std::call_once(once, [&] {
    try {
      const OrtApiBase* base = api_base(library, loaded.library);
      loaded.version = base->GetVersionString();
      loaded.api = base->GetApi(ORT_API_VERSION);
      if (loaded.api == nullptr) {
        const std::string api = std::to_string(ORT_API_VERSION);
        loaded.error = "ONNX Runtime " + loaded.version + " lacks C API version " + api +
                       ", which this program was compiled with (headers of 1." + api +
                       "); use ONNX Runtime 1." + api + " or newer";
        return;
      }
      Ort::InitApi(loaded.api);
    } catch (const Error& e) {
      loaded.error = e.what();
    }
  });
  if (loaded.api == nullptr) throw Error(loaded.error);
  if (!library.empty() && library != loaded.library) {
    throw Error("ONNX Runtime is already loaded from " + loaded.library + " in this process; cannot also load " +
                library);
  }
  return loaded;
}

std::basic_string<ORTCHAR_T> ort_path(const std::string& path) {
  // ORTCHAR_T is char on Linux and macOS; on Windows this widening handles ASCII paths only.
  return std::basic_string<ORTCHAR_T>(path.begin(), path.end());
}

}  // namespace

struct OnnxRuntimeScorer::Impl {
  Ort::Env env{ORT_LOGGING_LEVEL_WARNING, "stlpips"};
  Ort::Session session{nullptr};
};

OnnxRuntimeScorer::OnnxRuntimeScorer(const std::string& model_path, const OnnxRuntimeOptions& options) {
  init_api(options.library);
  require_readable(model_path);
  impl_ = std::make_unique<Impl>();
  std::map<std::string, std::string> metadata;
  try {
    Ort::SessionOptions session_options;
    session_options.SetIntraOpNumThreads(options.intra_op_threads);
    impl_->session = Ort::Session(impl_->env, ort_path(model_path).c_str(), session_options);

    Ort::AllocatorWithDefaultOptions allocator;
    const Ort::ModelMetadata model_metadata = impl_->session.GetModelMetadata();
    for (const auto& key : model_metadata.GetCustomMetadataMapKeysAllocated(allocator)) {
      metadata[key.get()] = model_metadata.LookupCustomMetadataMapAllocated(key.get(), allocator).get();
    }
  } catch (const Ort::Exception& e) {
    throw Error(model_path + ": ONNX Runtime cannot load it (" + e.what() + "); is it an .onnx file?");
  }
  info_ = ModelInfo::from_metadata(metadata, model_path);

  // The graph's signature must match what the metadata declares.
  Ort::AllocatorWithDefaultOptions allocator;
  std::map<std::string, ONNXTensorElementDataType> inputs;
  for (size_t i = 0; i < impl_->session.GetInputCount(); ++i) {
    inputs[impl_->session.GetInputNameAllocated(i, allocator).get()] =
        impl_->session.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
  }
  for (const char* name : {"in0", "in1"}) {
    const auto it = inputs.find(name);
    if (it == inputs.end()) throw Error(model_path + ": graph has no input '" + name + "'; re-export it");
    if (it->second != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw Error(model_path + ": input '" + name + "' is not float32 as the contract says; re-export it");
    }
  }
  std::vector<std::string> outputs;
  for (size_t i = 0; i < impl_->session.GetOutputCount(); ++i) {
    outputs.push_back(impl_->session.GetOutputNameAllocated(i, allocator).get());
  }
  for (const auto& declared : info_.outputs) {
    if (std::find(outputs.begin(), outputs.end(), declared) == outputs.end()) {
      throw Error(model_path + ": stlpips.outputs declares '" + declared +
                  "' but the graph has no such output; re-export it");
    }
  }
}

OnnxRuntimeScorer::~OnnxRuntimeScorer() = default;

std::string OnnxRuntimeScorer::runtime_version() { return init_api("").version; }

std::vector<float> OnnxRuntimeScorer::run(const Tensor& in0, const Tensor& in1) {
  const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> values;
  for (const Tensor* t : {&in0, &in1}) {
    // ONNX Runtime wraps the buffer without copying and never writes to inputs, hence the const_cast.
    values.push_back(Ort::Value::CreateTensor<float>(memory, const_cast<float*>(t->data.data()),
                                                     t->data.size(), t->shape.data(), t->shape.size()));
  }
  const char* input_names[] = {"in0", "in1"};
  const char* output_names[] = {"dist"};
  try {
    auto outputs = impl_->session.Run(Ort::RunOptions{nullptr}, input_names, values.data(), values.size(),
                                      output_names, 1);
    const float* dist = outputs[0].GetTensorData<float>();
    return std::vector<float>(dist, dist + outputs[0].GetTensorTypeAndShapeInfo().GetElementCount());
  } catch (const Ort::Exception& e) {
    throw Error(std::string("ONNX Runtime failed to run the model: ") + e.what());
  }
}

}  // namespace stlpips
