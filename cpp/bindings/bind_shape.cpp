// Bindings of the shape ops (see common.h).
#include "common.h"

namespace nablagrad {
namespace bindings {

void bind_shape_ops(py::module_& m) { (void)m; }

}  // namespace bindings
}  // namespace nablagrad
