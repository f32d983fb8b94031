//! The `runta` binary: everything is in the library (`runta::cli`).

/// mimalloc rather than the system allocator: after many snapshot changes (every rule change
/// allocates and frees a little), glibc's malloc spent a sixth of the ext_proc path's CPU
/// searching its fragmented free lists (BENCHMARKS.md, "Changes at scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    runta::cli::main()
}
