// The one translation unit that compiles stb_image's implementation (it is a single-header library).
#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include "stb_image.h"
