// Getting input tensors from files: images (through stb_image) and raw float32 tensors (.npy).
#pragma once

#include <cstdint>
#include <string>

#include "stlpips/model_info.h"

namespace stlpips {

// Refuse images with more pixels than this (decompression-bomb guard, as the Python runtime does).
constexpr int64_t kDefaultMaxPixels = 50'000'000;

// Decode an image file (PNG, JPEG, BMP, TGA, ...) into a [1, 3, H, W] float32 tensor in the model's input
// range [-1, 1], computed exactly as the Python runtime does: float32(v) / 127.5f - 1 for 8-bit images,
// float32(v) / 32767.5f - 1 for 16-bit grey PNGs. Grey is replicated to RGB; alpha is dropped (not
// composited). EXIF orientation is not applied. Throws Error if the file cannot be read or decoded.
Tensor load_image(const std::string& path, int64_t max_pixels = kDefaultMaxPixels);

// Read a 4-D float32 array saved by numpy.save (dtype '<f4', C order): the values are passed to the model
// unchanged, so they must already be NCHW RGB in [-1, 1]. Throws Error on any other dtype or layout.
Tensor load_npy(const std::string& path);

// Write a tensor as a numpy .npy file (dtype '<f4', C order), readable with numpy.load.
void save_npy(const Tensor& tensor, const std::string& path);

}  // namespace stlpips
