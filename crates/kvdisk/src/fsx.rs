//! Opening files in a block directory that someone else may have tampered with.
//!
//! A name in the directory may hold anything: a FIFO (opening it for reading blocks until
//! a writer appears, i.e. forever), a directory, a symlink to either, a device. Files are
//! therefore opened with `O_NONBLOCK | O_NOFOLLOW` (a FIFO opens at once, a symlink is
//! refused) and checked to be regular files on the open handle, so a name swapped between
//! a check and the open cannot slip through either.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// What a name that should be a regular file turned out to be.
pub(crate) fn kind_name(t: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Why [`open_regular`] gave no file.
pub(crate) enum OpenRefusal {
    /// Nothing under that name.
    Missing,
    /// Something that is not a regular file (named by [`kind_name`]).
    NotRegular(&'static str),
    Io(io::Error),
}

fn with_safe_flags(o: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    o
}

/// Opens `path` for reading if, and only if, it is a regular file; never blocks.
pub(crate) fn open_regular(path: &Path) -> Result<File, OpenRefusal> {
    let file = match with_safe_flags(OpenOptions::new().read(true)).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenRefusal::Missing),
        // ELOOP (a symlink under O_NOFOLLOW), ENXIO (a socket) and the like: say what the
        // name holds rather than the errno.
        Err(e) => {
            return Err(match fs::symlink_metadata(path) {
                Ok(m) if !m.is_file() => OpenRefusal::NotRegular(kind_name(m.file_type())),
                _ => OpenRefusal::Io(e),
            });
        }
    };
    let meta = file.metadata().map_err(OpenRefusal::Io)?;
    if !meta.is_file() {
        return Err(OpenRefusal::NotRegular(kind_name(meta.file_type())));
    }
    Ok(file)
}

/// Opens (creating if needed) `path` for writing without following a symlink or blocking
/// on a FIFO; fails unless the result is a regular file.
pub(crate) fn open_regular_for_write(path: &Path) -> io::Result<File> {
    let file =
        with_safe_flags(OpenOptions::new().create(true).truncate(false).write(true)).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is {}, not a regular file",
            path.display(),
            kind_name(meta.file_type())
        )));
    }
    Ok(file)
}

/// Removes whatever non-regular thing sits at `path` so a block can be written there
/// again: an empty directory, a FIFO, a symlink, a socket. A directory with contents is
/// left alone (it may be someone's data); the caller then reports the name as unusable.
pub(crate) fn remove_squatter(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
