// nablagrad/ops/shape.h
#pragma once

#include "../autograd.h"
