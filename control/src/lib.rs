//! kxdp control side.
