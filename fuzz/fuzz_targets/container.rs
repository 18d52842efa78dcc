#![no_main]

#[path = "../harness.rs"]
mod harness;

/// Counts allocations so the harness can assert that opening a container allocates at most
/// a fixed multiple of its index.
#[global_allocator]
static ALLOC: harness::CountingAlloc = harness::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::container(data));
