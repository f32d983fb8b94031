//! The `runta` binary: everything is in the library (`runta::cli`).

fn main() -> std::process::ExitCode {
    runta::cli::main()
}
