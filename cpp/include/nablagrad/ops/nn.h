// nablagrad/ops/nn.h
#pragma once

#include "../autograd.h"
