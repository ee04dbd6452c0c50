//! The `doorstep` binary: everything lives in the library; see `doorstep::cli`.

// Intake allocates many small JSON trees; mimalloc makes that markedly cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    doorstep::cli::main()
}
