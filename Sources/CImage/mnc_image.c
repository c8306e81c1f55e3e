/*
 * Image decoding and preprocessing; the interface and the supported formats are described in
 * mnc_image.h. This file is copied verbatim next to every generated classifier, so it must
 * stay C99 and compile without warnings under -Wall -Wextra.
 */
#include "mnc_image.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
/* jerror.h declares the message codes, such as JWRN_JPEG_EOF, that libjpeg reports. */
#include <jerror.h>
#include <png.h>

#if defined(__GNUC__)
#define MNC_PRINTF_FORMAT(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define MNC_PRINTF_FORMAT(fmt, args)
#endif

/* ---- Errors and small helpers ---------------------------------------------------------- */

static int set_error(char *err, size_t errlen, int code, const char *format, ...)
    MNC_PRINTF_FORMAT(4, 5);

/* Formats the message into `err` and returns `code`, so failures read `return set_error(...)`. */
static int set_error(char *err, size_t errlen, int code, const char *format, ...)
{
    va_list args;

    if (err != NULL && errlen > 0) {
        va_start(args, format);
        vsnprintf(err, errlen, format, args);
        va_end(args);
    }
    return code;
}

static unsigned read_u16_le(const unsigned char *p)
{
    return (unsigned)p[0] | ((unsigned)p[1] << 8);
}

static unsigned long read_u32_le(const unsigned char *p)
{
    return (unsigned long)p[0] | ((unsigned long)p[1] << 8) | ((unsigned long)p[2] << 16) |
           ((unsigned long)p[3] << 24);
}

static unsigned long read_u32_be(const unsigned char *p)
{
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) |
           ((unsigned long)p[2] << 8) | (unsigned long)p[3];
}

/* Two's-complement 32-bit little-endian value, converted without implementation-defined casts. */
static long read_s32_le(const unsigned char *p)
{
    unsigned long value = read_u32_le(p);

    if (value >= 0x80000000UL) {
        return -(long)(0xFFFFFFFFUL - value) - 1;
    }
    return (long)value;
}

/* Checks header dimensions before anything is allocated from them. */
static int check_dimensions(const char *format, long width, long height, char *err,
                            size_t errlen)
{
    if (width <= 0 || height <= 0) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid %s header: width %ld and height %ld must both be positive",
                         format, width, height);
    }
    if (width > MNC_IMAGE_MAX_DIMENSION || height > MNC_IMAGE_MAX_DIMENSION) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_TOO_LARGE,
                         "%s image is %ldx%ld pixels, larger than the limit of %dx%d", format,
                         width, height, MNC_IMAGE_MAX_DIMENSION, MNC_IMAGE_MAX_DIMENSION);
    }
    return MNC_IMAGE_OK;
}

/* Allocates width * height RGB pixels. The dimensions must have passed check_dimensions. */
static unsigned char *allocate_pixels(int width, int height)
{
    return malloc((size_t)width * (size_t)height * 3);
}

static int out_of_memory(const char *what, char *err, size_t errlen)
{
    return set_error(err, errlen, MNC_IMAGE_ERROR_MEMORY, "out of memory while %s", what);
}

/* Scales a sample in 0...max_value to 0...255, rounding to nearest. */
static unsigned char scale_to_8_bits(unsigned long value, unsigned long max_value)
{
    if (max_value == 255) {
        return (unsigned char)value;
    }
    return (unsigned char)(((unsigned long long)value * 255 + max_value / 2) / max_value);
}

/* ---- JPEG (libjpeg) --------------------------------------------------------------------- */

/* libjpeg reports fatal errors through error_exit, which must not return: it longjmps back to
 * decode_jpeg. `base` comes first so the jpeg_error_mgr pointer converts back to this struct. */
struct jpeg_error_context {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    int truncated;
    char message[JMSG_LENGTH_MAX];
};

struct jpeg_context {
    struct jpeg_decompress_struct decompress;
    struct jpeg_error_context error;
    /* Volatile because they are assigned after setjmp and read after longjmp. */
    unsigned char *volatile pixels;
    unsigned char *volatile row;
};

static void jpeg_fail(j_common_ptr cinfo)
{
    struct jpeg_error_context *error = (struct jpeg_error_context *)cinfo->err;

    cinfo->err->format_message(cinfo, error->message);
    longjmp(error->jump, 1);
}

/* libjpeg only warns when the data ends early and then pads the image with grey, so that
 * warning becomes an error here. Other warnings (such as extraneous bytes before a marker)
 * leave a usable image and are ignored. */
static void jpeg_warn(j_common_ptr cinfo, int level)
{
    struct jpeg_error_context *error = (struct jpeg_error_context *)cinfo->err;

    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        error->truncated = 1;
        longjmp(error->jump, 1);
    }
    if (level < 0) {
        cinfo->err->num_warnings++;
    }
}

static void jpeg_silence(j_common_ptr cinfo)
{
    (void)cinfo;
}

/* Converts one CMYK row to RGB with R = (255 - C) * (255 - K) / 255, rounded, and likewise G
 * and B. Adobe applications write CMYK inverted (0 means full ink) and mark the file with an
 * APP14 "Adobe" segment. The formula is the plain one, without colour management. */
static void convert_cmyk_row(const unsigned char *cmyk, unsigned char *rgb, int width,
                             int inverted)
{
    int x, c;

    for (x = 0; x < width; x++) {
        unsigned key = inverted ? cmyk[x * 4 + 3] : 255u - cmyk[x * 4 + 3];
        for (c = 0; c < 3; c++) {
            unsigned ink = inverted ? cmyk[x * 4 + c] : 255u - cmyk[x * 4 + c];
            rgb[x * 3 + c] = (unsigned char)((ink * key + 127) / 255);
        }
    }
}

/* Decodes into context->pixels. Errors inside libjpeg longjmp to decode_jpeg instead of
 * returning. */
static int decode_jpeg_rows(struct jpeg_context *context, const unsigned char *data,
                            size_t size, char *err, size_t errlen)
{
    struct jpeg_decompress_struct *cinfo = &context->decompress;
    int width, height, status;
    size_t row_bytes;

    jpeg_create_decompress(cinfo);
    /* Older libjpeg versions declare the buffer non-const, but libjpeg only reads it. */
    jpeg_mem_src(cinfo, (unsigned char *)data, (unsigned long)size);
    jpeg_read_header(cinfo, TRUE);

    status = check_dimensions("JPEG", (long)cinfo->image_width, (long)cinfo->image_height, err,
                              errlen);
    if (status != MNC_IMAGE_OK) {
        return status;
    }
    switch (cinfo->jpeg_color_space) {
    case JCS_GRAYSCALE:
        cinfo->out_color_space = JCS_GRAYSCALE;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        cinfo->out_color_space = JCS_CMYK;
        break;
    default:
        cinfo->out_color_space = JCS_RGB;
        break;
    }
    jpeg_start_decompress(cinfo);

    width = (int)cinfo->output_width;
    height = (int)cinfo->output_height;
    if ((long)cinfo->output_width != (long)cinfo->image_width ||
        (long)cinfo->output_height != (long)cinfo->image_height) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid JPEG: libjpeg decodes %dx%d pixels from a %ldx%ld header",
                         width, height, (long)cinfo->image_width, (long)cinfo->image_height);
    }
    context->pixels = allocate_pixels(width, height);
    if (context->pixels == NULL) {
        return out_of_memory("decoding a JPEG image", err, errlen);
    }
    row_bytes = (size_t)width * (size_t)cinfo->output_components;
    if (cinfo->out_color_space != JCS_RGB) {
        context->row = malloc(row_bytes);
        if (context->row == NULL) {
            return out_of_memory("decoding a JPEG image", err, errlen);
        }
    }

    while (cinfo->output_scanline < cinfo->output_height) {
        unsigned char *rgb = context->pixels + (size_t)cinfo->output_scanline * width * 3;
        JSAMPROW target = cinfo->out_color_space == JCS_RGB ? rgb : context->row;
        int x;

        /* A memory source never suspends, so each call returns one row or longjmps. */
        jpeg_read_scanlines(cinfo, &target, 1);
        if (cinfo->out_color_space == JCS_GRAYSCALE) {
            for (x = 0; x < width; x++) {
                rgb[x * 3] = rgb[x * 3 + 1] = rgb[x * 3 + 2] = context->row[x];
            }
        } else if (cinfo->out_color_space == JCS_CMYK) {
            convert_cmyk_row(context->row, rgb, width, cinfo->saw_Adobe_marker);
        }
    }
    jpeg_finish_decompress(cinfo);
    return MNC_IMAGE_OK;
}

static int decode_jpeg(const unsigned char *data, size_t size, mnc_image *out, char *err,
                       size_t errlen)
{
    struct jpeg_context context;
    int status;

    if (size > ULONG_MAX) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_TOO_LARGE, "JPEG data is too large");
    }
    /* jpeg_destroy_decompress below is safe on a zeroed struct whatever step failed. */
    memset(&context.decompress, 0, sizeof context.decompress);
    context.pixels = NULL;
    context.row = NULL;
    context.error.truncated = 0;
    context.error.message[0] = '\0';
    context.decompress.err = jpeg_std_error(&context.error.base);
    context.error.base.error_exit = jpeg_fail;
    context.error.base.emit_message = jpeg_warn;
    context.error.base.output_message = jpeg_silence;

    if (setjmp(context.error.jump) != 0) {
        if (context.error.truncated) {
            status = set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                               "truncated JPEG: the data ends at byte %zu, before the "
                               "end-of-image marker",
                               size);
        } else {
            status = set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT, "invalid JPEG: %s",
                               context.error.message);
        }
    } else {
        status = decode_jpeg_rows(&context, data, size, err, errlen);
    }
    jpeg_destroy_decompress(&context.decompress);
    free(context.row);
    if (status != MNC_IMAGE_OK) {
        free(context.pixels);
        return status;
    }
    out->width = (int)context.decompress.output_width;
    out->height = (int)context.decompress.output_height;
    out->pixels = context.pixels;
    return MNC_IMAGE_OK;
}

/* ---- PNG (libpng) ----------------------------------------------------------------------- */

/* Deflate emits at least 2 bits per 258-byte match, so compressed data is at least 1/1032 of
 * the decompressed size. A file shorter than that cannot hold the image its header claims. */
#define MNC_DEFLATE_MAX_RATIO 1032

struct png_context {
    png_structp png;
    png_infop info;
    const unsigned char *data;
    size_t size;
    size_t offset;
    int truncated;
    int width;
    int height;
    char message[256];
    /* Volatile because they are assigned after setjmp and read after longjmp. */
    unsigned char *volatile pixels;
    png_bytep *volatile rows;
};

static void png_fail(png_structp png, png_const_charp message)
{
    struct png_context *context = (struct png_context *)png_get_error_ptr(png);

    snprintf(context->message, sizeof context->message, "%s", message);
    png_longjmp(png, 1);
}

/* Warnings (unknown or damaged ancillary chunks, bad gamma values) do not affect the pixels. */
static void png_ignore_warning(png_structp png, png_const_charp message)
{
    (void)png;
    (void)message;
}

static void png_read_memory(png_structp png, png_bytep target, png_size_t length)
{
    struct png_context *context = (struct png_context *)png_get_io_ptr(png);

    if (length > context->size - context->offset) {
        context->truncated = 1;
        png_error(png, "unexpected end of data");
    }
    memcpy(target, context->data + context->offset, length);
    context->offset += length;
}

static int decode_png_rows(struct png_context *context, char *err, size_t errlen)
{
    png_structp png = context->png;
    png_infop info = context->info;
    png_uint_32 width, height;
    int bit_depth, color_type, interlace, status, y;
    unsigned long long minimum_bytes;

    /* IHDR must be the first chunk. Reading its size here reports an oversized image as such,
     * before libpng rejects it with a message about its user limits. */
    if (context->size >= 24 && memcmp(context->data + 12, "IHDR", 4) == 0) {
        status = check_dimensions("PNG", (long)read_u32_be(context->data + 16),
                                  (long)read_u32_be(context->data + 20), err, errlen);
        if (status == MNC_IMAGE_ERROR_TOO_LARGE) {
            return status;
        }
    }

    png_set_user_limits(png, MNC_IMAGE_MAX_DIMENSION, MNC_IMAGE_MAX_DIMENSION);
    /* At most 1000 stored ancillary chunks and 8,000,000 bytes per chunk, the defaults of
     * Debian's libpng 1.6.39 build, set explicitly so another build cannot raise them. */
    png_set_chunk_cache_max(png, 1000);
    png_set_chunk_malloc_max(png, 8000000);
    png_set_read_fn(png, context, png_read_memory);
    png_read_info(png, info);
    png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, NULL, NULL);

    status = check_dimensions("PNG", (long)width, (long)height, err, errlen);
    if (status != MNC_IMAGE_OK) {
        return status;
    }
    minimum_bytes = (unsigned long long)width * height * (unsigned)png_get_channels(png, info) *
                    (unsigned)bit_depth / 8 / MNC_DEFLATE_MAX_RATIO;
    if ((unsigned long long)context->size < minimum_bytes) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated PNG: a %lux%lu image needs at least %llu bytes of compressed "
                         "data, but the file has %zu bytes",
                         (unsigned long)width, (unsigned long)height, minimum_bytes,
                         context->size);
    }

    /* Convert every colour type to 8-bit RGB: expand palettes and low bit depths, keep the
     * high byte of 16-bit samples, drop alpha and replicate grey. Gamma is left alone. */
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png);
    }
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) {
        png_set_expand_gray_1_2_4_to_8(png);
    }
    if (bit_depth == 16) {
        png_set_strip_16(png);
    }
    if (color_type & PNG_COLOR_MASK_ALPHA) {
        png_set_strip_alpha(png);
    }
    if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) {
        png_set_gray_to_rgb(png);
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)width * 3) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_UNSUPPORTED,
                         "unsupported PNG: colour type %d with bit depth %d does not convert to "
                         "8-bit RGB",
                         color_type, bit_depth);
    }

    context->pixels = allocate_pixels((int)width, (int)height);
    context->rows = malloc((size_t)height * sizeof(png_bytep));
    if (context->pixels == NULL || context->rows == NULL) {
        return out_of_memory("decoding a PNG image", err, errlen);
    }
    for (y = 0; y < (int)height; y++) {
        context->rows[y] = context->pixels + (size_t)y * width * 3;
    }
    png_read_image(png, context->rows);
    /* Reads the chunks after the image data up to IEND, so a file cut short there is also
     * reported as truncated. */
    png_read_end(png, NULL);
    context->width = (int)width;
    context->height = (int)height;
    return MNC_IMAGE_OK;
}

static int decode_png(const unsigned char *data, size_t size, mnc_image *out, char *err,
                      size_t errlen)
{
    struct png_context context;
    int status;

    context.data = data;
    context.size = size;
    context.offset = 0;
    context.truncated = 0;
    context.width = 0;
    context.height = 0;
    context.message[0] = '\0';
    context.pixels = NULL;
    context.rows = NULL;
    context.info = NULL;
    context.png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, &context, png_fail, png_ignore_warning);
    if (context.png == NULL) {
        return out_of_memory("starting the PNG decoder", err, errlen);
    }
    context.info = png_create_info_struct(context.png);
    if (context.info == NULL) {
        png_destroy_read_struct(&context.png, NULL, NULL);
        return out_of_memory("starting the PNG decoder", err, errlen);
    }

    if (setjmp(png_jmpbuf(context.png)) != 0) {
        if (context.truncated) {
            status = set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                               "truncated PNG: the data ends at byte %zu before the image is "
                               "complete",
                               size);
        } else {
            status = set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT, "invalid PNG: %s",
                               context.message);
        }
    } else {
        status = decode_png_rows(&context, err, errlen);
    }
    png_destroy_read_struct(&context.png, &context.info, NULL);
    free(context.rows);
    if (status != MNC_IMAGE_OK) {
        free(context.pixels);
        return status;
    }
    out->pixels = context.pixels;
    out->width = context.width;
    out->height = context.height;
    return MNC_IMAGE_OK;
}

/* ---- BMP -------------------------------------------------------------------------------- */

enum {
    BMP_FILE_HEADER_SIZE = 14,
    BMP_RGB = 0,
    BMP_BITFIELDS = 3,
    BMP_ALPHABITFIELDS = 6
};

static const char *bmp_compression_name(unsigned long compression)
{
    switch (compression) {
    case 1: return "BI_RLE8";
    case 2: return "BI_RLE4";
    case 3: return "BI_BITFIELDS";
    case 4: return "BI_JPEG";
    case 5: return "BI_PNG";
    case 6: return "BI_ALPHABITFIELDS";
    case 11: return "BI_CMYK";
    case 12: return "BI_CMYKRLE8";
    case 13: return "BI_CMYKRLE4";
    default: return "unknown";
    }
}

/* A channel of a 16- or 32-bit pixel: (pixel & mask) >> shift gives 0...max_value. */
struct bmp_channel {
    unsigned long mask;
    int shift;
    unsigned long max_value;
};

static int bmp_channel_from_mask(struct bmp_channel *channel, unsigned long mask,
                                 int bits_per_pixel, const char *name, long offset, char *err,
                                 size_t errlen)
{
    unsigned long run;

    if (bits_per_pixel == 16) {
        mask &= 0xFFFFUL;
    }
    mask &= 0xFFFFFFFFUL;
    if (mask == 0) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid BMP: the %s channel mask at byte offset %ld is zero", name,
                         offset);
    }
    channel->mask = mask;
    channel->shift = 0;
    while (((mask >> channel->shift) & 1UL) == 0) {
        channel->shift++;
    }
    run = mask >> channel->shift;
    if ((run & (run + 1)) != 0) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid BMP: the %s channel mask 0x%08lx at byte offset %ld is not "
                         "one contiguous run of bits",
                         name, mask, offset);
    }
    channel->max_value = run;
    return MNC_IMAGE_OK;
}

static void convert_bmp_row(const unsigned char *row, unsigned char *rgb, int width,
                            int bits_per_pixel, const unsigned char *palette,
                            int palette_entry_size, const struct bmp_channel *channels)
{
    int x, c;

    for (x = 0; x < width; x++) {
        unsigned char *pixel = rgb + (size_t)x * 3;

        if (bits_per_pixel == 24) {
            pixel[0] = row[x * 3 + 2];
            pixel[1] = row[x * 3 + 1];
            pixel[2] = row[x * 3];
        } else if (bits_per_pixel == 16 || bits_per_pixel == 32) {
            unsigned long value = bits_per_pixel == 16 ? read_u16_le(row + x * 2)
                                                       : read_u32_le(row + (size_t)x * 4);
            for (c = 0; c < 3; c++) {
                unsigned long sample = (value & channels[c].mask) >> channels[c].shift;
                pixel[c] = scale_to_8_bits(sample, channels[c].max_value);
            }
        } else {
            /* Palette entries are B, G, R (then a reserved byte in 4-byte entries). */
            const unsigned char *entry = palette + (size_t)row[x] * palette_entry_size;
            pixel[0] = entry[2];
            pixel[1] = entry[1];
            pixel[2] = entry[0];
        }
    }
}

/* Unpacks 1- and 4-bit palette indices to one byte each, most significant bits first. */
static void unpack_bmp_indices(const unsigned char *row, unsigned char *indices, int width,
                               int bits_per_pixel)
{
    int x;

    for (x = 0; x < width; x++) {
        if (bits_per_pixel == 8) {
            indices[x] = row[x];
        } else if (bits_per_pixel == 4) {
            indices[x] = (unsigned char)((row[x / 2] >> (x % 2 == 0 ? 4 : 0)) & 0x0F);
        } else {
            indices[x] = (unsigned char)((row[x / 8] >> (7 - x % 8)) & 0x01);
        }
    }
}

static int decode_bmp(const unsigned char *data, size_t size, mnc_image *out, char *err,
                      size_t errlen)
{
    unsigned long pixel_offset, header_size, compression = BMP_RGB, colors_used = 0;
    unsigned long palette_size = 0, palette_offset, header_end;
    long width, height, y;
    unsigned bits_per_pixel, planes;
    int top_down = 0, palette_entry_size = 4, status, c;
    struct bmp_channel channels[3];
    const unsigned char *palette = NULL;
    unsigned char *pixels, *indices = NULL;
    size_t stride;

    memset(channels, 0, sizeof channels);
    if (size < BMP_FILE_HEADER_SIZE + 4) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated BMP: the file has %zu bytes, fewer than the 18 bytes of the "
                         "file header and the info header size",
                         size);
    }
    pixel_offset = read_u32_le(data + 10);
    header_size = read_u32_le(data + 14);
    if (header_size != 12 && header_size != 40 && header_size != 52 && header_size != 56 &&
        header_size != 108 && header_size != 124) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_UNSUPPORTED,
                         "unsupported BMP info header size %lu at byte offset 14 (expected 12, "
                         "40, 52, 56, 108 or 124)",
                         header_size);
    }
    header_end = BMP_FILE_HEADER_SIZE + header_size;
    if (size < header_end) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated BMP: the %lu-byte info header ends past the end of the "
                         "%zu-byte file",
                         header_size, size);
    }

    if (header_size == 12) {
        /* OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes, 3-byte palette entries. */
        width = (long)read_u16_le(data + 18);
        height = (long)read_u16_le(data + 20);
        planes = read_u16_le(data + 22);
        bits_per_pixel = read_u16_le(data + 24);
        palette_entry_size = 3;
    } else {
        width = read_s32_le(data + 18);
        height = read_s32_le(data + 22);
        planes = read_u16_le(data + 26);
        bits_per_pixel = read_u16_le(data + 28);
        compression = read_u32_le(data + 30);
        colors_used = read_u32_le(data + 46);
    }
    if (planes != 1) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid BMP: planes is %u in the info header, expected 1", planes);
    }
    /* A negative height marks rows stored top to bottom. */
    if (height < 0) {
        top_down = 1;
        height = height == LONG_MIN ? LONG_MAX : -height;
    }
    status = check_dimensions("BMP", width, height, err, errlen);
    if (status != MNC_IMAGE_OK) {
        return status;
    }
    if (bits_per_pixel != 1 && bits_per_pixel != 4 && bits_per_pixel != 8 &&
        bits_per_pixel != 16 && bits_per_pixel != 24 && bits_per_pixel != 32) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_UNSUPPORTED,
                         "unsupported BMP bit depth %u in the info header (expected 1, 4, 8, "
                         "16, 24 or 32)",
                         bits_per_pixel);
    }
    if (compression != BMP_RGB &&
        !((compression == BMP_BITFIELDS || compression == BMP_ALPHABITFIELDS) &&
          (bits_per_pixel == 16 || bits_per_pixel == 32))) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_UNSUPPORTED,
                         "unsupported BMP compression %lu (%s) with %u bits per pixel at byte "
                         "offset 30; only uncompressed (BI_RGB) images and 16- or 32-bit "
                         "BI_BITFIELDS images can be read",
                         compression, bmp_compression_name(compression), bits_per_pixel);
    }

    if (bits_per_pixel == 16 || bits_per_pixel == 32) {
        unsigned long masks[3];
        unsigned long mask_offset = BMP_FILE_HEADER_SIZE + 40;
        static const char *const names[3] = {"red", "green", "blue"};

        if (compression == BMP_RGB) {
            /* Fixed layouts of uncompressed images: X1R5G5B5 and X8R8G8B8. */
            masks[0] = bits_per_pixel == 16 ? 0x7C00UL : 0xFF0000UL;
            masks[1] = bits_per_pixel == 16 ? 0x03E0UL : 0x00FF00UL;
            masks[2] = bits_per_pixel == 16 ? 0x001FUL : 0x0000FFUL;
        } else {
            /* A 40-byte info header is followed by the masks; larger headers contain them. */
            if (header_size == 40) {
                header_end += compression == BMP_ALPHABITFIELDS ? 16 : 12;
                if (size < header_end) {
                    return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                                     "truncated BMP: the channel masks end at byte offset %lu, "
                                     "past the end of the %zu-byte file",
                                     header_end, size);
                }
            }
            for (c = 0; c < 3; c++) {
                masks[c] = read_u32_le(data + mask_offset + 4 * c);
            }
        }
        for (c = 0; c < 3; c++) {
            status = bmp_channel_from_mask(&channels[c], masks[c], (int)bits_per_pixel,
                                           names[c], (long)(mask_offset + 4 * c), err, errlen);
            if (status != MNC_IMAGE_OK) {
                return status;
            }
        }
    }

    if (bits_per_pixel <= 8) {
        unsigned long max_colors = 1UL << bits_per_pixel;

        if (colors_used > max_colors) {
            return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                             "invalid BMP: %lu colours used at byte offset 46, more than the "
                             "%lu that %u bits per pixel can index",
                             colors_used, max_colors, bits_per_pixel);
        }
        palette_size = colors_used == 0 ? max_colors : colors_used;
        palette_offset = header_end;
        header_end = palette_offset + palette_size * (unsigned long)palette_entry_size;
        if (size < header_end) {
            return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                             "truncated BMP: the %lu-colour palette at byte offset %lu ends "
                             "past the end of the %zu-byte file",
                             palette_size, palette_offset, size);
        }
        palette = data + palette_offset;
    }

    if (pixel_offset < header_end) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid BMP: the pixel data offset %lu at byte offset 10 points into "
                         "the headers, which end at byte offset %lu",
                         pixel_offset, header_end);
    }
    /* Rows are padded to a multiple of 4 bytes. */
    stride = ((size_t)width * bits_per_pixel + 31) / 32 * 4;
    if (pixel_offset > size || stride * (size_t)height > size - pixel_offset) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated BMP: %ld rows of %zu bytes from byte offset %lu end at byte "
                         "%llu, but the file has %zu bytes",
                         height, stride, pixel_offset,
                         (unsigned long long)stride * (unsigned long long)height + pixel_offset,
                         size);
    }

    pixels = allocate_pixels((int)width, (int)height);
    if (bits_per_pixel <= 8) {
        indices = malloc((size_t)width);
    }
    if (pixels == NULL || (bits_per_pixel <= 8 && indices == NULL)) {
        free(pixels);
        free(indices);
        return out_of_memory("decoding a BMP image", err, errlen);
    }
    for (y = 0; y < height; y++) {
        long stored_row = top_down ? y : height - 1 - y;
        const unsigned char *row = data + pixel_offset + (size_t)stored_row * stride;
        unsigned char *rgb = pixels + (size_t)y * (size_t)width * 3;

        if (bits_per_pixel <= 8) {
            long x;

            unpack_bmp_indices(row, indices, (int)width, (int)bits_per_pixel);
            for (x = 0; x < width; x++) {
                if (indices[x] >= palette_size) {
                    status = set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                                       "invalid BMP: pixel (%ld, %ld) has palette index %u, "
                                       "but the palette has %lu colours",
                                       x, y, (unsigned)indices[x], palette_size);
                    free(pixels);
                    free(indices);
                    return status;
                }
            }
            row = indices;
        }
        convert_bmp_row(row, rgb, (int)width, (int)bits_per_pixel, palette, palette_entry_size,
                        channels);
    }
    free(indices);
    out->width = (int)width;
    out->height = (int)height;
    out->pixels = pixels;
    return MNC_IMAGE_OK;
}

/* ---- PPM / PGM (netpbm binary formats) -------------------------------------------------- */

static int is_pnm_space(unsigned char byte)
{
    return byte == ' ' || byte == '\t' || byte == '\n' || byte == '\v' || byte == '\f' ||
           byte == '\r';
}

/* Reads one header number after at least one byte of whitespace or comment ("#" to the end of
 * the line). Values above 999999999 are clamped, which the callers' limits then reject. */
static int read_pnm_field(const unsigned char *data, size_t size, size_t *offset,
                          const char *format, const char *field, unsigned long *value,
                          char *err, size_t errlen)
{
    size_t position = *offset;
    int separated = 0;

    while (position < size && (is_pnm_space(data[position]) || data[position] == '#')) {
        if (data[position] == '#') {
            while (position < size && data[position] != '\n' && data[position] != '\r') {
                position++;
            }
        } else {
            position++;
        }
        separated = 1;
    }
    if (position >= size) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated %s: the header ends before the %s field", format, field);
    }
    if (!separated || data[position] < '0' || data[position] > '9') {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid %s header: expected whitespace and a decimal %s at byte "
                         "offset %zu, found byte 0x%02x",
                         format, field, position, (unsigned)data[position]);
    }
    *value = 0;
    while (position < size && data[position] >= '0' && data[position] <= '9') {
        if (*value <= 99999999UL) {
            *value = *value * 10 + (unsigned long)(data[position] - '0');
        } else {
            *value = 999999999UL;
        }
        position++;
    }
    *offset = position;
    return MNC_IMAGE_OK;
}

static int decode_pnm(const unsigned char *data, size_t size, mnc_image *out, char *err,
                      size_t errlen)
{
    int channels = data[1] == '6' ? 3 : 1;
    const char *format = channels == 3 ? "PPM" : "PGM";
    size_t offset = 2, sample_bytes, needed, i, count;
    unsigned long width, height, max_value;
    unsigned char *pixels;
    int status;

    status = read_pnm_field(data, size, &offset, format, "width", &width, err, errlen);
    if (status == MNC_IMAGE_OK) {
        status = read_pnm_field(data, size, &offset, format, "height", &height, err, errlen);
    }
    if (status == MNC_IMAGE_OK) {
        status = read_pnm_field(data, size, &offset, format, "maxval", &max_value, err, errlen);
    }
    if (status != MNC_IMAGE_OK) {
        return status;
    }
    /* Exactly one whitespace byte separates maxval from the samples. */
    if (offset >= size) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated %s: the file ends after the maxval field", format);
    }
    if (!is_pnm_space(data[offset])) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid %s header: expected whitespace after maxval at byte offset "
                         "%zu, found byte 0x%02x",
                         format, offset, (unsigned)data[offset]);
    }
    offset++;
    status = check_dimensions(format, (long)width, (long)height, err, errlen);
    if (status != MNC_IMAGE_OK) {
        return status;
    }
    if (max_value == 0 || max_value > 65535) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "invalid %s header: maxval %lu is outside 1...65535", format,
                         max_value);
    }
    sample_bytes = max_value < 256 ? 1 : 2;
    count = (size_t)width * height * (size_t)channels;
    needed = count * sample_bytes;
    if (needed > size - offset) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated %s: %lux%lu pixels need %zu bytes of samples at byte offset "
                         "%zu, but only %zu remain",
                         format, width, height, needed, offset, size - offset);
    }

    pixels = allocate_pixels((int)width, (int)height);
    if (pixels == NULL) {
        return out_of_memory("decoding a PPM/PGM image", err, errlen);
    }
    for (i = 0; i < count; i++) {
        const unsigned char *sample = data + offset + i * sample_bytes;
        /* 16-bit samples are big-endian. */
        unsigned long value = sample_bytes == 1 ? sample[0] : ((unsigned long)sample[0] << 8) |
                                                                  sample[1];
        unsigned char scaled;

        if (value > max_value) {
            free(pixels);
            return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                             "invalid %s: sample value %lu at byte offset %zu exceeds maxval "
                             "%lu",
                             format, value, offset + i * sample_bytes, max_value);
        }
        scaled = scale_to_8_bits(value, max_value);
        if (channels == 3) {
            pixels[i] = scaled;
        } else {
            pixels[i * 3] = pixels[i * 3 + 1] = pixels[i * 3 + 2] = scaled;
        }
    }
    out->width = (int)width;
    out->height = (int)height;
    out->pixels = pixels;
    return MNC_IMAGE_OK;
}

/* ---- Format detection and file reading -------------------------------------------------- */

static void clear_image(mnc_image *image)
{
    image->width = 0;
    image->height = 0;
    image->pixels = NULL;
}

int mnc_image_decode(const unsigned char *data, size_t size, mnc_image *out, char *err,
                     size_t errlen)
{
    static const unsigned char png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    char first_bytes[16] = "";
    size_t i;

    if (out == NULL || (data == NULL && size > 0)) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "mnc_image_decode needs an output image and data");
    }
    clear_image(out);
    if (size == 0) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT, "the file is empty (0 bytes)");
    }
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
        return decode_jpeg(data, size, out, err, errlen);
    }
    if (size >= 8 && memcmp(data, png_signature, 8) == 0) {
        return decode_png(data, size, out, err, errlen);
    }
    if (size < 8 && memcmp(data, png_signature, size) == 0) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                         "truncated PNG: the file has %zu bytes, fewer than the 8-byte signature",
                         size);
    }
    if (size >= 2 && data[0] == 'B' && data[1] == 'M') {
        return decode_bmp(data, size, out, err, errlen);
    }
    if (size >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6')) {
        return decode_pnm(data, size, out, err, errlen);
    }
    if (size >= 2 && data[0] == 'P' && data[1] >= '1' && data[1] <= '7') {
        return set_error(err, errlen, MNC_IMAGE_ERROR_UNSUPPORTED,
                         "unsupported netpbm variant P%c; only binary PGM (P5) and PPM (P6) "
                         "can be read",
                         data[1]);
    }
    for (i = 0; i < size && i < 4; i++) {
        snprintf(first_bytes + 3 * i, sizeof first_bytes - 3 * i, " %02x", (unsigned)data[i]);
    }
    return set_error(err, errlen, MNC_IMAGE_ERROR_FORMAT,
                     "not a JPEG, PNG, BMP, PPM or PGM image: the file starts with bytes%s",
                     first_bytes);
}

/* Reads the whole file; the buffer grows by doubling so pipes and special files work too. */
static int read_file(const char *path, unsigned char **data, size_t *size, char *err,
                     size_t errlen)
{
    FILE *file;
    unsigned char *buffer = NULL;
    size_t capacity = 0, length = 0;

    *data = NULL;
    *size = 0;
    errno = 0;
    file = fopen(path, "rb");
    if (file == NULL) {
#ifdef ENOENT
        if (errno == ENOENT) {
            return set_error(err, errlen, MNC_IMAGE_ERROR_IO, "file not found");
        }
#endif
#ifdef EACCES
        if (errno == EACCES) {
            return set_error(err, errlen, MNC_IMAGE_ERROR_IO,
                             "cannot open the file: permission denied");
        }
#endif
        return set_error(err, errlen, MNC_IMAGE_ERROR_IO, "cannot open the file (errno %d)",
                         errno);
    }
    for (;;) {
        size_t count;

        if (length == capacity) {
            unsigned char *grown;

            /* Reading one byte past the limit distinguishes a file of exactly the limit from a
             * longer one. */
            if (capacity > MNC_IMAGE_MAX_FILE_BYTES) {
                fclose(file);
                free(buffer);
                return set_error(err, errlen, MNC_IMAGE_ERROR_TOO_LARGE,
                                 "the file is larger than the limit of %zu bytes",
                                 (size_t)MNC_IMAGE_MAX_FILE_BYTES);
            }
            capacity = capacity == 0 ? 65536 : capacity * 2;
            if (capacity > MNC_IMAGE_MAX_FILE_BYTES + 1) {
                capacity = MNC_IMAGE_MAX_FILE_BYTES + 1;
            }
            grown = realloc(buffer, capacity);
            if (grown == NULL) {
                fclose(file);
                free(buffer);
                return out_of_memory("reading the file", err, errlen);
            }
            buffer = grown;
        }
        count = fread(buffer + length, 1, capacity - length, file);
        length += count;
        if (count == 0) {
            break;
        }
    }
    if (ferror(file)) {
        int error_number = errno;

        fclose(file);
        free(buffer);
#ifdef EISDIR
        if (error_number == EISDIR) {
            return set_error(err, errlen, MNC_IMAGE_ERROR_IO, "cannot read: it is a directory");
        }
#endif
        return set_error(err, errlen, MNC_IMAGE_ERROR_IO, "reading the file failed (errno %d)",
                         error_number);
    }
    fclose(file);
    *data = buffer;
    *size = length;
    return MNC_IMAGE_OK;
}

int mnc_image_load(const char *path, mnc_image *out, char *err, size_t errlen)
{
    unsigned char *data;
    size_t size;
    int status;

    if (path == NULL || out == NULL) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "mnc_image_load needs a path and an output image");
    }
    clear_image(out);
    status = read_file(path, &data, &size, err, errlen);
    if (status != MNC_IMAGE_OK) {
        return status;
    }
    status = mnc_image_decode(data, size, out, err, errlen);
    free(data);
    return status;
}

void mnc_image_free(mnc_image *image)
{
    if (image == NULL) {
        return;
    }
    free(image->pixels);
    clear_image(image);
}

/* ---- Resampling (Pillow's ImagingResample with the bilinear filter) ----------------------
 *
 * This follows ImagingResample in Pillow's src/libImaging/Resample.c. Pillow resizes in two
 * separable passes, horizontal then vertical, each rounding and clipping to 8 bits. Output
 * sample i of an axis scaled by s = in_size / out_size is centred at input coordinate
 * (i + 0.5) * s. The triangle filter's support is 1 input pixel, widened to s when downscaling
 * (antialiasing). The weights of the input pixels whose centres fall in the support are
 * normalized to sum 1 and converted to fixed point with 22 fractional bits. Each pass sums
 * pixel * weight from 2^21 (one half, for rounding) and keeps bits 22 and up, clipped to
 * 0...255. Computing only a window of output samples gives the same values as resizing the
 * whole image, because each output sample depends only on its own index.
 */

#define MNC_WEIGHT_BITS 22

struct resample_axis {
    int count;       /* output samples computed, starting at the window's first index */
    int taps;        /* weights stored per output sample */
    int *first;      /* first input index contributing to each output sample */
    int *length;     /* number of contributing input indices, at most `taps` */
    int32_t *weights; /* count * taps fixed-point weights */
};

static double triangle_filter(double x)
{
    if (x < 0.0) {
        x = -x;
    }
    return x < 1.0 ? 1.0 - x : 0.0;
}

static void resample_axis_free(struct resample_axis *axis)
{
    free(axis->first);
    free(axis->length);
    free(axis->weights);
    axis->first = axis->length = NULL;
    axis->weights = NULL;
}

/* Computes weights for output samples window_first ... window_first + count - 1 of an axis
 * resized from in_size to out_size. Returns 0 when out of memory. */
static int resample_axis_init(struct resample_axis *axis, int in_size, int out_size,
                              int window_first, int count)
{
    double scale = (double)in_size / out_size;
    double filter_scale = scale < 1.0 ? 1.0 : scale;
    double support = filter_scale; /* the triangle filter's support, 1, times filter_scale */
    double inverse_filter_scale = 1.0 / filter_scale;
    int ceil_support = (int)support;
    double *raw;
    int i;

    if (ceil_support < support) {
        ceil_support++;
    }
    axis->count = count;
    axis->taps = ceil_support * 2 + 1;
    axis->first = malloc(((size_t)count + 1) * sizeof(int));
    axis->length = malloc(((size_t)count + 1) * sizeof(int));
    axis->weights = malloc(((size_t)count * axis->taps + 1) * sizeof(int32_t));
    raw = malloc((size_t)axis->taps * sizeof(double));
    if (axis->first == NULL || axis->length == NULL || axis->weights == NULL || raw == NULL) {
        resample_axis_free(axis);
        free(raw);
        return 0;
    }

    for (i = 0; i < count; i++) {
        double center = (window_first + i + 0.5) * scale;
        double total = 0.0;
        int32_t *weights = axis->weights + (size_t)i * axis->taps;
        /* Truncation toward zero, as Pillow rounds these bounds. */
        int low = (int)(center - support + 0.5);
        int high = (int)(center + support + 0.5);
        int n, k;

        if (low < 0) {
            low = 0;
        }
        if (high > in_size) {
            high = in_size;
        }
        n = high - low;
        if (n > axis->taps) {
            n = axis->taps;
        }
        for (k = 0; k < n; k++) {
            raw[k] = triangle_filter((k + low - center + 0.5) * inverse_filter_scale);
            total += raw[k];
        }
        for (k = 0; k < axis->taps; k++) {
            double weight = k < n && total != 0.0 ? raw[k] / total : 0.0;
            double fixed = weight * (1 << MNC_WEIGHT_BITS);
            weights[k] = (int32_t)(weight < 0.0 ? fixed - 0.5 : fixed + 0.5);
        }
        axis->first[i] = low;
        axis->length[i] = n;
    }
    free(raw);
    return 1;
}

/* Rounds a pass's accumulator to 8 bits. The weights are non-negative and sum to about
 * 2^22, so 255 times their sum plus the rounding half stays far below INT32_MAX. */
static unsigned char clip_accumulator(int32_t accumulator)
{
    int32_t value;

    if (accumulator < 0) {
        return 0;
    }
    value = accumulator >> MNC_WEIGHT_BITS;
    return (unsigned char)(value > 255 ? 255 : value);
}

/*
 * Resizes the in_width x in_height RGB region at `source` (rows `source_stride` bytes apart)
 * to out_width x out_height and writes the window of window_width x window_height output
 * pixels starting at (window_x, window_y) to `target`, rows packed.
 */
static int resample_window(const unsigned char *source, size_t source_stride, int in_width,
                           int in_height, int out_width, int out_height, int window_x,
                           int window_y, int window_width, int window_height,
                           unsigned char *target, char *err, size_t errlen)
{
    struct resample_axis horizontal, vertical;
    unsigned char *rows;
    int first_row, row_count, x, y, k, c;

    if (!resample_axis_init(&horizontal, in_width, out_width, window_x, window_width)) {
        return out_of_memory("resizing the image", err, errlen);
    }
    if (!resample_axis_init(&vertical, in_height, out_height, window_y, window_height)) {
        resample_axis_free(&horizontal);
        return out_of_memory("resizing the image", err, errlen);
    }
    /* The horizontal pass needs only the input rows the vertical pass reads. */
    first_row = vertical.first[0];
    row_count = vertical.first[window_height - 1] + vertical.length[window_height - 1] -
                first_row;
    rows = malloc((size_t)row_count * window_width * 3);
    if (rows == NULL) {
        resample_axis_free(&horizontal);
        resample_axis_free(&vertical);
        return out_of_memory("resizing the image", err, errlen);
    }

    for (y = 0; y < row_count; y++) {
        const unsigned char *in_row = source + (size_t)(first_row + y) * source_stride;
        unsigned char *out_row = rows + (size_t)y * window_width * 3;

        for (x = 0; x < window_width; x++) {
            const int32_t *weights = horizontal.weights + (size_t)x * horizontal.taps;
            const unsigned char *in_pixel = in_row + (size_t)horizontal.first[x] * 3;

            for (c = 0; c < 3; c++) {
                int32_t sum = 1 << (MNC_WEIGHT_BITS - 1);
                for (k = 0; k < horizontal.length[x]; k++) {
                    sum += in_pixel[k * 3 + c] * weights[k];
                }
                out_row[x * 3 + c] = clip_accumulator(sum);
            }
        }
    }

    for (y = 0; y < window_height; y++) {
        const int32_t *weights = vertical.weights + (size_t)y * vertical.taps;
        const unsigned char *in_column =
            rows + (size_t)(vertical.first[y] - first_row) * window_width * 3;
        size_t in_stride = (size_t)window_width * 3;
        unsigned char *out_row = target + (size_t)y * window_width * 3;

        for (x = 0; x < window_width * 3; x++) {
            int32_t sum = 1 << (MNC_WEIGHT_BITS - 1);
            for (k = 0; k < vertical.length[y]; k++) {
                sum += in_column[k * in_stride + x] * weights[k];
            }
            out_row[x] = clip_accumulator(sum);
        }
    }

    free(rows);
    resample_axis_free(&horizontal);
    resample_axis_free(&vertical);
    return MNC_IMAGE_OK;
}

/* ---- Preprocessing ---------------------------------------------------------------------- */

static int is_finite(double value)
{
    return value == value && value <= DBL_MAX && value >= -DBL_MAX;
}

static int check_preprocess(const mnc_preprocess *params, char *err, size_t errlen)
{
    int c;

    if (params->height < 1 || params->height > MNC_IMAGE_MAX_DIMENSION || params->width < 1 ||
        params->width > MNC_IMAGE_MAX_DIMENSION) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "invalid preprocessing: input size %dx%d must be within 1...%d on "
                         "each side",
                         params->width, params->height, MNC_IMAGE_MAX_DIMENSION);
    }
    if (params->resize_shorter_side < 0 ||
        params->resize_shorter_side > MNC_IMAGE_MAX_DIMENSION) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "invalid preprocessing: resize_shorter_side %d must be 0 or within "
                         "1...%d",
                         params->resize_shorter_side, MNC_IMAGE_MAX_DIMENSION);
    }
    if (params->resize_shorter_side == 0 &&
        !(params->crop_fraction > 0.0 && params->crop_fraction <= 1.0)) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "invalid preprocessing: crop_fraction %g must be in (0, 1]",
                         params->crop_fraction);
    }
    for (c = 0; c < 3; c++) {
        if (!is_finite(params->mean[c]) || !is_finite(params->std[c]) ||
            params->std[c] == 0.0) {
            return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                             "invalid preprocessing: channel %d needs a finite mean and a "
                             "finite nonzero std, got mean %g and std %g",
                             c, params->mean[c], params->std[c]);
        }
    }
    if (params->layout != MNC_IMAGE_LAYOUT_NCHW && params->layout != MNC_IMAGE_LAYOUT_NHWC) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "invalid preprocessing: layout %d must be %d (NCHW) or %d (NHWC)",
                         params->layout, MNC_IMAGE_LAYOUT_NCHW, MNC_IMAGE_LAYOUT_NHWC);
    }
    return MNC_IMAGE_OK;
}

/* Python's round(numerator / 2) for numerator >= 0: halves go to the even neighbour. */
static int round_half_to_even(int numerator)
{
    int half = numerator / 2;

    if (numerator % 2 != 0 && half % 2 != 0) {
        half++;
    }
    return half;
}

/* Returns the coordinate at which torchvision's CenterCrop starts a window of `window` pixels
 * on a side of `side` pixels. It is negative when the window is larger and padded. */
static int center_crop_start(int side, int window)
{
    if (window > side) {
        return -((window - side) / 2);
    }
    return round_half_to_even(side - window);
}

/* Converts the resized 8-bit window (rows packed, `window` pixels placed at (x0, y0) of the
 * height x width input, pixel value 0 elsewhere) to normalized floats. */
static void write_normalized(const unsigned char *window, int x0, int y0, int window_width,
                             int window_height, const mnc_preprocess *params, float *out)
{
    size_t plane = (size_t)params->height * params->width;
    int x, y, c;

    for (y = 0; y < params->height; y++) {
        for (x = 0; x < params->width; x++) {
            int inside = x >= x0 && x < x0 + window_width && y >= y0 && y < y0 + window_height;
            size_t pixel = (size_t)y * params->width + x;

            for (c = 0; c < 3; c++) {
                double value =
                    inside ? window[((size_t)(y - y0) * window_width + (x - x0)) * 3 + c] : 0.0;
                float normalized = (float)((value - params->mean[c]) / params->std[c]);

                if (params->layout == MNC_IMAGE_LAYOUT_NCHW) {
                    out[(size_t)c * plane + pixel] = normalized;
                } else {
                    out[pixel * 3 + c] = normalized;
                }
            }
        }
    }
}

int mnc_image_preprocess(const mnc_image *image, const mnc_preprocess *params, float *out,
                         char *err, size_t errlen)
{
    const unsigned char *source;
    size_t stride;
    int in_width, in_height, out_width, out_height;
    int window_x, window_y, window_width, window_height, place_x, place_y, status;
    unsigned char *window;

    if (image == NULL || params == NULL || out == NULL || image->pixels == NULL) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "mnc_image_preprocess needs a decoded image, parameters and an output "
                         "buffer");
    }
    if (image->width < 1 || image->height < 1 || image->width > MNC_IMAGE_MAX_DIMENSION ||
        image->height > MNC_IMAGE_MAX_DIMENSION) {
        return set_error(err, errlen, MNC_IMAGE_ERROR_ARGUMENT,
                         "mnc_image_preprocess got an image of %dx%d pixels", image->width,
                         image->height);
    }
    status = check_preprocess(params, err, errlen);
    if (status != MNC_IMAGE_OK) {
        return status;
    }
    stride = (size_t)image->width * 3;

    if (params->resize_shorter_side == 0) {
        /* Crop the centred square, then resize all of it to the input size. */
        int shorter = image->width < image->height ? image->width : image->height;
        int side = (int)(params->crop_fraction * shorter + 0.5);

        if (side < 1) {
            side = 1;
        }
        if (side > shorter) {
            side = shorter;
        }
        source = image->pixels + (size_t)((image->height - side) / 2) * stride +
                 (size_t)((image->width - side) / 2) * 3;
        in_width = in_height = side;
        out_width = params->width;
        out_height = params->height;
        window_x = window_y = 0;
        window_width = out_width;
        window_height = out_height;
        place_x = place_y = 0;
    } else {
        /* Resize the shorter side to resize_shorter_side (torchvision computes the longer
         * side as int(n * longer / shorter) in double precision), then cut out the centre. */
        int n = params->resize_shorter_side;
        int portrait = image->width <= image->height;
        int shorter = portrait ? image->width : image->height;
        int longer = portrait ? image->height : image->width;
        int resized_longer = (int)((double)n * (double)longer / (double)shorter);
        int left, top;

        source = image->pixels;
        in_width = image->width;
        in_height = image->height;
        out_width = portrait ? n : resized_longer;
        out_height = portrait ? resized_longer : n;
        left = center_crop_start(out_width, params->width);
        top = center_crop_start(out_height, params->height);
        /* Output pixel (x, y) is resized pixel (left + x, top + y); keep the part inside. */
        window_x = left < 0 ? 0 : left;
        window_y = top < 0 ? 0 : top;
        window_width = (left + params->width < out_width ? left + params->width : out_width) -
                       window_x;
        window_height =
            (top + params->height < out_height ? top + params->height : out_height) - window_y;
        place_x = window_x - left;
        place_y = window_y - top;
    }

    window = malloc((size_t)window_width * window_height * 3);
    if (window == NULL) {
        return out_of_memory("resizing the image", err, errlen);
    }
    status = resample_window(source, stride, in_width, in_height, out_width, out_height,
                             window_x, window_y, window_width, window_height, window, err,
                             errlen);
    if (status == MNC_IMAGE_OK) {
        write_normalized(window, place_x, place_y, window_width, window_height, params, out);
    }
    free(window);
    return status;
}
