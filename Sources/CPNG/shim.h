// PNG and JPEG decoding to 8-bit RGB through the system libpng and libjpeg(-turbo).
//
// Why C helpers live in this header: libjpeg reports fatal errors through `error_exit`, which must not return
// (its default calls exit()). The only safe way out is longjmp back to a setjmp in the caller, and Swift cannot
// setjmp/longjmp across its own frames. These static inline functions keep the setjmp, the libjpeg calls and the
// longjmp inside C; Swift only sees a return code. The PNG side uses libpng's simplified `png_image` API, which
// catches its own errors internally, and is wrapped the same way for one uniform interface.
//
// Both decoders: return 0 and a malloc'ed tightly packed RGB buffer (caller frees) on success; return
// KVC_IMAGE_ERROR with a message, or KVC_IMAGE_TOO_LARGE with the header's width and height filled in when the
// image exceeds the limits (checked before any pixel buffer is allocated).
#ifndef KVC_CPNG_SHIM_H
#define KVC_CPNG_SHIM_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <png.h>
#include <jpeglib.h>

#define KVC_IMAGE_OK 0
#define KVC_IMAGE_ERROR 1
#define KVC_IMAGE_TOO_LARGE 2

static inline void kvc_copy_message(char *dst, size_t capacity, const char *src) {
    if (capacity == 0) return;
    snprintf(dst, capacity, "%s", src);
}

static inline int kvc_exceeds(unsigned long width, unsigned long height, unsigned long max_side,
                              unsigned long max_pixels) {
    return width == 0 || height == 0 || width > max_side || height > max_side || width * height > max_pixels;
}

// MARK: PNG

static inline int kvc_png_decode_rgb(const unsigned char *data, size_t size, unsigned long max_side,
                                     unsigned long max_pixels, unsigned char **out_pixels,
                                     unsigned int *out_width, unsigned int *out_height,
                                     char *message, size_t message_capacity) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    *out_pixels = NULL;
    *out_width = 0;
    *out_height = 0;
    if (!png_image_begin_read_from_memory(&image, data, size)) {
        kvc_copy_message(message, message_capacity, image.message);
        png_image_free(&image);
        return KVC_IMAGE_ERROR;
    }
    *out_width = image.width;
    *out_height = image.height;
    if (kvc_exceeds(image.width, image.height, max_side, max_pixels)) {
        png_image_free(&image);
        return KVC_IMAGE_TOO_LARGE;
    }
    // 16-bit files without gamma information are taken as sRGB (as other tools do), not linear.
    image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
    image.format = PNG_FORMAT_RGB;
    size_t bytes = PNG_IMAGE_SIZE(image);
    unsigned char *pixels = (unsigned char *)malloc(bytes);
    if (pixels == NULL) {
        kvc_copy_message(message, message_capacity, "out of memory for the pixel buffer");
        png_image_free(&image);
        return KVC_IMAGE_ERROR;
    }
    // Transparent pixels are composited onto white (easy-VQA and most diagrams have white backgrounds).
    png_color white = {255, 255, 255};
    if (!png_image_finish_read(&image, &white, pixels, 0, NULL)) {
        kvc_copy_message(message, message_capacity, image.message);
        free(pixels);
        png_image_free(&image);
        return KVC_IMAGE_ERROR;
    }
    *out_pixels = pixels;
    return KVC_IMAGE_OK;
}

// MARK: JPEG

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
} kvc_jpeg_error_manager;

static void kvc_jpeg_error_exit(j_common_ptr cinfo) {
    kvc_jpeg_error_manager *err = (kvc_jpeg_error_manager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

// Warnings (level -1) mean corrupt or truncated data that libjpeg would paper over with grey; they are fatal here
// so a damaged file is reported instead of decoded into a wrong image. Trace messages (level >= 0) are ignored.
static void kvc_jpeg_emit_message(j_common_ptr cinfo, int msg_level) {
    if (msg_level < 0) kvc_jpeg_error_exit(cinfo);
}

static void kvc_jpeg_output_message(j_common_ptr cinfo) { (void)cinfo; }

// A progressive JPEG may declare thousands of tiny scans, each a pass over the whole coefficient buffer: a small
// hostile file could keep the decoder busy for minutes. Real encoders write about ten; more than this is refused.
#define KVC_JPEG_MAX_SCANS 500

static void kvc_jpeg_progress(j_common_ptr cinfo) {
    if (cinfo->is_decompressor && ((j_decompress_ptr)cinfo)->input_scan_number > KVC_JPEG_MAX_SCANS) {
        kvc_jpeg_error_manager *err = (kvc_jpeg_error_manager *)cinfo->err;
        snprintf(err->message, sizeof err->message, "more than %d progressive scans", KVC_JPEG_MAX_SCANS);
        longjmp(err->escape, 1);
    }
}

static inline int kvc_jpeg_decode_rgb(const unsigned char *data, size_t size, unsigned long max_side,
                                      unsigned long max_pixels, unsigned char **out_pixels,
                                      unsigned int *out_width, unsigned int *out_height,
                                      char *message, size_t message_capacity) {
    struct jpeg_decompress_struct cinfo;
    kvc_jpeg_error_manager err;
    struct jpeg_progress_mgr progress;
    unsigned char *volatile pixels = NULL;
    *out_pixels = NULL;
    *out_width = 0;
    *out_height = 0;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.base);
    err.base.error_exit = kvc_jpeg_error_exit;
    err.base.emit_message = kvc_jpeg_emit_message;
    err.base.output_message = kvc_jpeg_output_message;
    err.message[0] = '\0';
    if (setjmp(err.escape)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        kvc_copy_message(message, message_capacity, err.message);
        return KVC_IMAGE_ERROR;
    }
    jpeg_create_decompress(&cinfo);
    progress.progress_monitor = kvc_jpeg_progress;
    cinfo.progress = &progress;
    if (size == 0 || size > 0xFFFFFFFFul) {
        jpeg_destroy_decompress(&cinfo);
        kvc_copy_message(message, message_capacity, size == 0 ? "empty file" : "file larger than 4 GiB");
        return KVC_IMAGE_ERROR;
    }
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    *out_width = cinfo.image_width;
    *out_height = cinfo.image_height;
    if (kvc_exceeds(cinfo.image_width, cinfo.image_height, max_side, max_pixels)) {
        jpeg_destroy_decompress(&cinfo);
        return KVC_IMAGE_TOO_LARGE;
    }
    // Bounds libjpeg's working memory (progressive coefficient buffers) independently of the pixel limit.
    cinfo.mem->max_memory_to_use = 1024L * 1024L * 1024L;
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3) {
        jpeg_destroy_decompress(&cinfo);
        kvc_copy_message(message, message_capacity, "decoder did not produce 3 colour components");
        return KVC_IMAGE_ERROR;
    }
    size_t stride = (size_t)cinfo.output_width * 3;
    pixels = (unsigned char *)malloc(stride * cinfo.output_height);
    if (pixels == NULL) {
        jpeg_destroy_decompress(&cinfo);
        kvc_copy_message(message, message_capacity, "out of memory for the pixel buffer");
        return KVC_IMAGE_ERROR;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + (size_t)cinfo.output_scanline * stride;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            jpeg_destroy_decompress(&cinfo);
            free(pixels);
            kvc_copy_message(message, message_capacity, "decoder stopped before the last scanline");
            return KVC_IMAGE_ERROR;
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    *out_pixels = pixels;
    return KVC_IMAGE_OK;
}

#endif
