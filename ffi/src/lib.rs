//! The C ABI of Tandem.
