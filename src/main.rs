//! The `doorstep` binary: everything lives in the library; see `doorstep::cli`.
fn main() -> std::process::ExitCode {
    doorstep::cli::main()
}
