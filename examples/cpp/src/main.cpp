// stlpips_score: the command-line host around stlpips::Scorer.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "stlpips/scorer.h"
#include "stlpips/tensor_io.h"
#ifdef STLPIPS_WITH_OPENVINO
#include "stlpips/openvino_scorer.h"
#endif

namespace {

constexpr const char* kUsage = R"(usage: stlpips_score REF DIST --model FILE.onnx [options]
       stlpips_score --model FILE.onnx --info

Prints the ST-LPIPS / LPIPS distance between REF and DIST, one line per pair.

REF, DIST            images of equal size (PNG, JPEG, BMP, TGA, ...; grey and alpha are accepted),
                     or .npy files holding float32 NCHW tensors already in [-1, 1], passed to the model
                     unchanged (batches N0, N1: equal, or one of them 1)
--model FILE         an .onnx file exported by stlpips-export (required)
--engine NAME        onnxruntime (default), or openvino in builds with STLPIPS_WITH_OPENVINO
--threads N          ONNX Runtime intra-op threads (default: ONNX Runtime's choice)
--ort-library PATH   libonnxruntime to load (builds with STLPIPS_ORT_LOAD_AT_RUNTIME; default: the
                     STLPIPS_ORT_LIBRARY environment variable, else the path set at configure time)
--save-inputs DIR    also write the tensors given to the model as DIR/in0.npy and DIR/in1.npy
--info               print the model's metadata and the engine's version, then exit
-h, --help           this text

Output: dist[i] with 9 significant digits (enough to round-trip float32).
Exit status: 0 success, 1 bad model or inputs, 2 bad command line.
)";

struct Args {
  std::vector<std::string> files;
  std::string model;
  std::string engine = "onnxruntime";
  std::string ort_library;
  std::string save_inputs;
  int threads = 0;
  bool info = false;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

Args parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--model") {
      args.model = value();
    } else if (arg == "--engine") {
      args.engine = value();
    } else if (arg == "--ort-library") {
      args.ort_library = value();
    } else if (arg == "--save-inputs") {
      args.save_inputs = value();
    } else if (arg == "--threads") {
      const std::string text = value();
      try {
        size_t used = 0;
        args.threads = std::stoi(text, &used);
        if (used != text.size() || args.threads < 0) throw std::invalid_argument(text);
      } catch (const std::exception&) {
        throw UsageError("--threads takes a whole number >= 0, got '" + text + "'");
      }
    } else if (arg == "--info") {
      args.info = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else {
      args.files.push_back(arg);
    }
  }
  if (args.model.empty()) throw UsageError("--model FILE.onnx is required");
  if (!args.info && args.files.size() != 2) {
    throw UsageError("expected two inputs (REF DIST), got " + std::to_string(args.files.size()));
  }
  if (args.engine != "onnxruntime" && args.engine != "openvino") {
    throw UsageError("--engine is onnxruntime or openvino, got '" + args.engine + "'");
  }
  return args;
}

bool is_npy(const std::string& path) {
  if (path.size() < 4) return false;
  std::string ext = path.substr(path.size() - 4);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".npy";
}

std::unique_ptr<stlpips::Scorer> make_scorer(const Args& args) {
  if (args.engine == "openvino") {
#ifdef STLPIPS_WITH_OPENVINO
    return std::make_unique<stlpips::OpenVinoScorer>(args.model);
#else
    throw UsageError("this build has no OpenVINO engine; configure with -DSTLPIPS_WITH_OPENVINO=ON");
#endif
  }
  stlpips::OnnxRuntimeOptions options;
  options.intra_op_threads = args.threads;
  options.library = args.ort_library;
  return std::make_unique<stlpips::OnnxRuntimeScorer>(args.model, options);
}

void print_info(const stlpips::Scorer& scorer) {
  const std::string version = scorer.engine() == "onnxruntime"
                                  ? stlpips::OnnxRuntimeScorer::runtime_version()
#ifdef STLPIPS_WITH_OPENVINO
                                  : stlpips::OpenVinoScorer::runtime_version();
#else
                                  : std::string("?");
#endif
  std::cout << "engine: " << scorer.engine() << " " << version << "\n";
  for (const auto& [key, value] : scorer.info().metadata) std::cout << key << ": " << value << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "stlpips_score: " << e.what() << "\n\n" << kUsage;
    return 2;
  }
  try {
    const auto scorer = make_scorer(args);
    if (args.info) {
      print_info(*scorer);
      return 0;
    }
    std::vector<stlpips::Tensor> inputs;
    for (const auto& file : args.files) {
      inputs.push_back(is_npy(file) ? stlpips::load_npy(file) : stlpips::load_image(file));
    }
    if (!args.save_inputs.empty()) {
      stlpips::save_npy(inputs[0], args.save_inputs + "/in0.npy");
      stlpips::save_npy(inputs[1], args.save_inputs + "/in1.npy");
    }
    scorer->info().check_inputs(inputs[0], inputs[1], args.files[0], args.files[1]);
    for (const float d : scorer->score(inputs[0], inputs[1])) std::printf("%.9g\n", static_cast<double>(d));
    return 0;
  } catch (const UsageError& e) {
    std::cerr << "stlpips_score: " << e.what() << "\n";
    return 2;
  } catch (const stlpips::Error& e) {
    std::cerr << "stlpips_score: " << e.what() << "\n";
    return 1;
  }
}
