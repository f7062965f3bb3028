// nablagrad/ops/conv.h
#pragma once

#include "../autograd.h"
