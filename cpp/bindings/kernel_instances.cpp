// The kernel entry points, compiled once for the extension (kernels/instances.h): the other
// binding files are built with NABLAGRAD_EXTERN_KERNELS and call these.
#include "nablagrad/kernels/instances.h"

NABLAGRAD_INSTANTIATE_KERNELS()
