#include "mnc_image.h"
int mnc_image_version(void) { return 1; }
