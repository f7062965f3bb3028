// The kernel entry points, compiled once for every C++ test (kernels/instances.h): the tests are
// built with NABLAGRAD_EXTERN_KERNELS, so each calls these instead of compiling its own copy.
#include "nablagrad/kernels/instances.h"

NABLAGRAD_INSTANTIATE_KERNELS()
