#ifndef MNC_IMAGE_H
#define MNC_IMAGE_H
/* Image decoding and preprocessing; implemented in mnc_image.c. */
int mnc_image_version(void);
#endif
