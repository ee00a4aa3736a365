#include "stlpips/tensor_io.h"

#include <cstring>
#include <fstream>
#include <memory>
#include <regex>

#include "stb_image.h"

namespace stlpips {
namespace {

// Pixel value -> model input, in float32 arithmetic to match the Python runtime bit for bit
// (the same formula in double precision rounds 128 of the 256 byte values differently).
template <typename Pixel>
Tensor to_nchw(const Pixel* hwc, int height, int width, float half_scale) {
  Tensor t;
  t.shape = {1, 3, height, width};
  t.data.resize(static_cast<size_t>(3) * height * width);
  const size_t plane = static_cast<size_t>(height) * width;
  for (size_t i = 0; i < plane; ++i) {
    for (size_t c = 0; c < 3; ++c) {
      t.data[c * plane + i] = static_cast<float>(hwc[i * 3 + c]) / half_scale - 1.0f;
    }
  }
  return t;
}

struct StbFree {
  void operator()(void* p) const { stbi_image_free(p); }
};

bool little_endian() {
  const uint16_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

}  // namespace

Tensor load_image(const std::string& path, int64_t max_pixels) {
  int width = 0, height = 0, channels = 0;
  if (!stbi_info(path.c_str(), &width, &height, &channels)) {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw Error(path + ": cannot open the file; check the path");
    throw Error(path + ": cannot decode it as an image (" + stbi_failure_reason() +
                "); is it a PNG, JPEG, BMP or TGA file?");
  }
  if (static_cast<int64_t>(width) * height > max_pixels) {
    throw Error(path + ": " + std::to_string(static_cast<int64_t>(width) * height) +
                " pixels is over the limit of " + std::to_string(max_pixels) +
                " (decompression-bomb guard); raise the limit if the image is trusted");
  }
  // Ask stb for 3 channels: it replicates grey and drops alpha, as the Python runtime does. Only 16-bit grey
  // keeps its 16 bits there (Pillow reduces 16-bit RGB to 8 bits by its high byte, as stbi_load does).
  if (channels == 1 && stbi_is_16_bit(path.c_str())) {
    std::unique_ptr<stbi_us, StbFree> pixels(stbi_load_16(path.c_str(), &width, &height, &channels, 3));
    if (!pixels) throw Error(path + ": cannot decode it (" + std::string(stbi_failure_reason()) + ")");
    return to_nchw(pixels.get(), height, width, 32767.5f);
  }
  std::unique_ptr<stbi_uc, StbFree> pixels(stbi_load(path.c_str(), &width, &height, &channels, 3));
  if (!pixels) throw Error(path + ": cannot decode it (" + std::string(stbi_failure_reason()) + ")");
  return to_nchw(pixels.get(), height, width, 127.5f);
}

Tensor load_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the file; check the path");
  auto refuse = [&](const std::string& why) {
    return Error(path + ": " + why + "; save a 4-D float32 NCHW array with numpy.save");
  };

  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw refuse("not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char len[2];
    if (!in.read(reinterpret_cast<char*>(len), 2)) throw refuse("truncated header");
    header_len = len[0] | (len[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    unsigned char len[4];
    if (!in.read(reinterpret_cast<char*>(len), 4)) throw refuse("truncated header");
    header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<uint32_t>(len[3]) << 24);
  } else {
    throw refuse(".npy version " + std::to_string(magic[6]) + " is not supported");
  }
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len)) throw refuse("truncated header");

  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('descr'\s*:\s*'([^']*)')")) || m[1] != "<f4") {
    throw refuse("dtype is " + (m.empty() ? std::string("unknown") : m[1].str()) + ", not float32 ('<f4')");
  }
  if (!std::regex_search(header, m, std::regex(R"('fortran_order'\s*:\s*(True|False))")) || m[1] != "False") {
    throw refuse("array is in Fortran order");
  }
  if (!std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))"))) throw refuse("no shape");
  Tensor t;
  const std::string dims = m[1];
  const std::regex number(R"(\d+)");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it) {
    t.shape.push_back(std::stoll(it->str()));
  }
  if (t.shape.size() != 4) throw refuse("array is " + std::to_string(t.shape.size()) + "-D, not 4-D NCHW");
  if (!little_endian()) throw Error("reading .npy files needs a little-endian machine");

  size_t count = 1;
  for (const int64_t d : t.shape) count *= static_cast<size_t>(d);
  t.data.resize(count);
  if (!in.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(count * sizeof(float)))) {
    throw refuse("file is shorter than its shape says");
  }
  return t;
}

void save_npy(const Tensor& tensor, const std::string& path) {
  std::string dims;
  for (const int64_t d : tensor.shape) dims += std::to_string(d) + ", ";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Format 1.0: magic, version, 2-byte header length, header padded with spaces to 64 bytes, newline.
  const size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path + ": cannot write the file");
  const unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                    static_cast<unsigned char>(header.size() & 0xff),
                                    static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(prefix), 10);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(tensor.data.data()),
            static_cast<std::streamsize>(tensor.data.size() * sizeof(float)));
  if (!out) throw Error(path + ": write failed");
}

}  // namespace stlpips
