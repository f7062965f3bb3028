// Bindings of the conv ops (see common.h).
#include "common.h"

namespace nablagrad {
namespace bindings {

void bind_conv_ops(py::module_& m) { (void)m; }

}  // namespace bindings
}  // namespace nablagrad
