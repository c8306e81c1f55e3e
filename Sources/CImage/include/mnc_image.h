/*
 * Image decoding and preprocessing for MobileNet inputs.
 *
 * The compiler (`mnc run --image`) and every standalone classifier that `mnc` generates compile
 * this header and mnc_image.c unchanged, so both prepare an image identically. The code is C99,
 * needs libjpeg (libjpeg-turbo) and libpng, keeps no global state, and is reentrant: each call
 * uses only its arguments.
 *
 * Formats, chosen by the file's first bytes and never by its name:
 *   JPEG  Baseline and progressive. Greyscale, YCbCr, RGB, CMYK and YCCK become RGB. The EXIF
 *         orientation tag is not applied.
 *   PNG   Every colour type and bit depth. Palettes are expanded, 16-bit samples keep their
 *         high byte, alpha is dropped (not composited), and grey is replicated to RGB.
 *   BMP   Uncompressed (BI_RGB) 1/4/8-bit palette and 16/24/32-bit images, and 16/32-bit
 *         BI_BITFIELDS images, with bottom-up or top-down rows.
 *   PPM/PGM  Binary P6 and P5 with maxval 1...65535. Samples are scaled to 0...255, rounding.
 *
 * Every function returns MNC_IMAGE_OK (0) or one of the error codes below. On error it writes a
 * one-line message without a trailing newline to `err` (truncated to `errlen` bytes, always
 * NUL-terminated when `errlen` > 0; `err` may be NULL). The message names the failing field
 * or byte offset but not the path, so callers prefix the path themselves.
 */
#ifndef MNC_IMAGE_H
#define MNC_IMAGE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Images wider or taller than this are rejected from their header, before any allocation, so
 * a decoded image takes at most 16384 * 16384 * 3 bytes (768 MiB). */
#define MNC_IMAGE_MAX_DIMENSION 16384

/* Files longer than this (1 GiB) are rejected while reading, whatever their dimensions. */
#define MNC_IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)

enum {
    MNC_IMAGE_OK = 0,
    MNC_IMAGE_ERROR_IO = 1,          /* the file cannot be opened or read */
    MNC_IMAGE_ERROR_FORMAT = 2,      /* empty, truncated, corrupt or not an image */
    MNC_IMAGE_ERROR_UNSUPPORTED = 3, /* a valid image in a variant this decoder does not read */
    MNC_IMAGE_ERROR_TOO_LARGE = 4,   /* the file or the image exceeds the limits above */
    MNC_IMAGE_ERROR_MEMORY = 5,      /* malloc failed */
    MNC_IMAGE_ERROR_ARGUMENT = 6     /* a NULL pointer or an invalid preprocessing parameter */
};

enum {
    MNC_IMAGE_LAYOUT_NCHW = 0, /* out[c][y][x] */
    MNC_IMAGE_LAYOUT_NHWC = 1  /* out[y][x][c] */
};

/* A decoded image: `width * height` pixels of 8-bit R, G, B, row by row from the top, with no
 * padding between rows. `pixels` comes from malloc and is released by mnc_image_free. */
typedef struct mnc_image {
    int width;
    int height;
    unsigned char *pixels;
} mnc_image;

/*
 * How to turn an image into a `3 * height * width` float32 network input.
 *
 * With `resize_shorter_side` == 0 (the TensorFlow reference pipeline), the centred square of
 * side round(crop_fraction * shorter side) is cropped, with left = (w - side) / 2 and
 * top = (h - side) / 2 rounded down, then resized to width x height.
 * With `resize_shorter_side` > 0 (torchvision's Resize(n) then CenterCrop), the image is resized
 * so its shorter side is n and its longer side is floor(n * longer / shorter), then the centred
 * width x height window is cut out with top = round((resized height - height) / 2), ties to
 * even as Python's round does, and likewise left. Where the window is larger than the resized
 * image, torchvision pads floor((height - resized height) / 2) rows of pixel value 0 above it,
 * and the same for columns on the left, and so does this code.
 * Both resize like Pillow's Image.resize(size, Image.BILINEAR), with antialiasing, so the
 * 8-bit pixels equal Pillow's (ImageTests checks this on real photographs). Each value is then
 * (pixel - mean[c]) / std[c], with pixel in 0...255 and channels in R, G, B order.
 */
typedef struct mnc_preprocess {
    int height;              /* 1...MNC_IMAGE_MAX_DIMENSION */
    int width;               /* 1...MNC_IMAGE_MAX_DIMENSION */
    int resize_shorter_side; /* 0, or 1...MNC_IMAGE_MAX_DIMENSION */
    double crop_fraction;    /* in (0, 1]; used only when resize_shorter_side is 0 */
    double mean[3];          /* R, G, B, in 0...255 pixel units */
    double std[3];           /* R, G, B, nonzero */
    int layout;              /* MNC_IMAGE_LAYOUT_NCHW or MNC_IMAGE_LAYOUT_NHWC */
} mnc_preprocess;

/* Reads and decodes the file at `path`. On success `*out` owns newly allocated pixels. On
 * error `*out` is set to an empty image and nothing stays allocated. */
int mnc_image_load(const char *path, mnc_image *out, char *err, size_t errlen);

/* Decodes an image in memory. `data` is only read and may be freed after the call. */
int mnc_image_decode(const unsigned char *data, size_t size, mnc_image *out, char *err,
                     size_t errlen);

/* Frees the pixels of an image from mnc_image_load or mnc_image_decode and empties it.
 * Accepts NULL and images that are already empty. */
void mnc_image_free(mnc_image *image);

/* Writes `3 * params->height * params->width` floats to `out` as described at mnc_preprocess.
 * Allocates temporary buffers with malloc and frees them before returning. */
int mnc_image_preprocess(const mnc_image *image, const mnc_preprocess *params, float *out,
                         char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
