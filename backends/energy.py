"""Energy per operation, the one table both backends' cost models use.

Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014: 45 nm,
0.9 V, picojoules per operation on 32 bits or per 32-bit memory access, as tabled in
seeds/004. Memory traffic counted in bytes is charged per 4 bytes; 8-bit operations are
charged as 32-bit ones (an upper bound: the seed gives no 8-bit costs).
"""

ENERGY_PJ = {
    "int_add": 0.1, "float_add": 0.9, "register": 1.0, "int_mult": 3.1, "float_mult": 3.7,
    "sram": 5.0, "dram": 640.0,
}
