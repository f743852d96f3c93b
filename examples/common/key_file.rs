//! Keys read from a file (`--api-key-file`), so none has to be on a command
//! line, where every user of the machine sees it in `ps`.

use colloquy::Secret;

/// The key in the file at `path`: its content without surrounding
/// whitespace (a trailing newline is usual); an empty file is an error.
pub fn read_key_file(path: &std::path::Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("the key file {} is empty", path.display()));
    }
    Ok(Secret::new(key))
}
