// The whole public API of weft in one include.
#pragma once

#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/config.hpp"
#include "weft/dtype.hpp"
#include "weft/error.hpp"
#include "weft/grid.hpp"
#include "weft/linear.hpp"
#include "weft/log.hpp"
#include "weft/mappings.hpp"
#include "weft/mlp.hpp"
#include "weft/parameter.hpp"
#include "weft/partition.hpp"
#include "weft/rng.hpp"
#include "weft/shape.hpp"
#include "weft/tensor.hpp"
