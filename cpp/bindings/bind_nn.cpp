// Bindings of the nn ops (see common.h).
#include "common.h"

namespace nablagrad {
namespace bindings {

void bind_nn_ops(py::module_& m) { (void)m; }

}  // namespace bindings
}  // namespace nablagrad
