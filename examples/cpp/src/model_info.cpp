#include "stlpips/model_info.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace stlpips {
namespace {

std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream stream(s);
  std::string part;
  while (std::getline(stream, part, ',')) {
    part = trim(part);
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

std::string shape_text(const Tensor& t) {
  std::string text = "[";
  for (size_t i = 0; i < t.shape.size(); ++i) text += (i ? "," : "") + std::to_string(t.shape[i]);
  return text + "]";
}

}  // namespace

ModelInfo ModelInfo::from_metadata(const std::map<std::string, std::string>& metadata,
                                   const std::string& model) {
  auto refuse = [&](const std::string& why) {
    return Error(model + ": not a usable stlpips model (" + why + "); export one with `stlpips-export`");
  };
  auto get = [&](const std::string& key) -> const std::string& {
    const auto it = metadata.find(key);
    if (it == metadata.end()) throw refuse("metadata key " + key + " is missing");
    return it->second;
  };

  const auto format = metadata.find("stlpips.format");
  if (format == metadata.end()) throw refuse("no stlpips.format in its metadata_props");
  if (format->second != kSupportedFormat) {
    throw refuse("stlpips.format is '" + format->second + "', this program reads format " + kSupportedFormat);
  }

  ModelInfo info;
  info.metadata = metadata;
  info.net = get("stlpips.net");
  info.variant = get("stlpips.variant");
  const auto precision = metadata.find("stlpips.precision");
  info.precision = precision == metadata.end() ? "fp32" : precision->second;

  // Format 1 fixes the range at [-1, 1]; the key is still read so that a future format that changes it
  // is refused here instead of silently scoring wrongly scaled images.
  const std::string range = get("stlpips.input_range");
  std::string compact;
  std::copy_if(range.begin(), range.end(), std::back_inserter(compact), [](char c) { return c != ' '; });
  if (compact != "-1,1") throw refuse("stlpips.input_range is '" + range + "', expected '-1,1'");
  info.range_lo = -1.0f;
  info.range_hi = 1.0f;

  const std::string& min_size = get("stlpips.min_size");
  try {
    size_t used = 0;
    info.min_size = std::stoll(min_size, &used);
    if (used != min_size.size()) throw std::invalid_argument("trailing text");
  } catch (const std::exception&) {
    throw refuse("stlpips.min_size '" + min_size + "' is not an integer");
  }
  if (info.min_size < 1) throw refuse("stlpips.min_size is " + min_size);

  // Empty or absent: H and W are dynamic.
  const auto static_hw = metadata.find("stlpips.static_hw");
  if (static_hw != metadata.end() && !static_hw->second.empty()) {
    const std::string& hw = static_hw->second;
    char x = 0, rest = 0;
    long long h = 0, w = 0;
    if (std::sscanf(hw.c_str(), "%lld%c%lld%c", &h, &x, &w, &rest) != 3 || (x != 'x' && x != 'X') || h < 1 ||
        w < 1) {
      throw refuse("stlpips.static_hw '" + hw + "' is not HxW");
    }
    info.static_height = h;
    info.static_width = w;
  }

  info.outputs = split_commas(get("stlpips.outputs"));
  if (!info.has_output("dist")) {
    throw refuse("stlpips.outputs is '" + get("stlpips.outputs") + "', which lacks 'dist'");
  }
  return info;
}

bool ModelInfo::has_output(const std::string& name) const {
  return std::find(outputs.begin(), outputs.end(), name) != outputs.end();
}

void ModelInfo::check_inputs(const Tensor& in0, const Tensor& in1, const std::string& name0,
                             const std::string& name1) const {
  for (const auto* t : {&in0, &in1}) {
    const std::string& name = t == &in0 ? name0 : name1;
    if (t->shape.size() != 4) {
      throw Error(name + ": shape " + shape_text(*t) + " is not 4-D NCHW");
    }
    int64_t count = 1;
    for (const int64_t d : t->shape) count *= d;
    if (count != static_cast<int64_t>(t->data.size()) || count == 0) {
      throw Error(name + ": shape " + shape_text(*t) + " does not match its " +
                  std::to_string(t->data.size()) + " values");
    }
    if (t->shape[1] != 3) {
      throw Error(name + ": " + std::to_string(t->shape[1]) + " channels; the model takes RGB (3 channels)");
    }
    if (static_height > 0 && (t->height() != static_height || t->width() != static_width)) {
      throw Error(name + ": " + std::to_string(t->height()) + "x" + std::to_string(t->width()) +
                  " pixels (HxW), but this model was exported for " + std::to_string(static_height) + "x" +
                  std::to_string(static_width) + " only (stlpips.static_hw); resize the images or use a " +
                  "model exported without --static");
    }
    if (t->height() < min_size || t->width() < min_size) {
      throw Error(name + ": " + std::to_string(t->height()) + "x" + std::to_string(t->width()) +
                  " pixels (HxW) is below this model's minimum of " + std::to_string(min_size) + "x" +
                  std::to_string(min_size) + " (stlpips.min_size); use larger images");
    }
  }
  if (in0.height() != in1.height() || in0.width() != in1.width()) {
    throw Error(name0 + " vs " + name1 + ": sizes differ (" + std::to_string(in0.height()) + "x" +
                std::to_string(in0.width()) + " vs " + std::to_string(in1.height()) + "x" +
                std::to_string(in1.width()) +
                ", HxW); the metric compares aligned images: crop or resize them to one size");
  }
  if (in0.batch() != in1.batch() && in0.batch() != 1 && in1.batch() != 1) {
    throw Error(name0 + " vs " + name1 + ": batch sizes " + std::to_string(in0.batch()) + " and " +
                std::to_string(in1.batch()) + " differ and neither is 1 (one reference against many)");
  }
}

}  // namespace stlpips
