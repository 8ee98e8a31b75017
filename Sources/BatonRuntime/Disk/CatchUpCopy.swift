#if canImport(Glibc)
import Glibc
#endif

/// A catch-up copy from the server (DESIGN.md, catching up), received into
/// `DIR.incoming` (`incoming/checkpoint`, `incoming/files/INO`) and installed
/// over a standby's data directory.
public enum CatchUpCopy {
    /// Makes the copy the data directory's content, durably: once it returns,
    /// a power cut leaves the copy (the server is told it is installed, and
    /// the standby may be promoted from it). `partial`: the copy holds only
    /// the files that differ; the others stay.
    public static func install(from incoming: String, into directory: String, partial: Bool, epoch: UInt64) throws {
        // The copy's data is on disk before any name in the data directory points at it.
        let names = try Disk.list(incoming + "/files")
        for name in names { try OpenFile(path: incoming + "/files/" + name, flags: O_RDONLY).sync() }
        try OpenFile(path: incoming + "/checkpoint", flags: O_RDONLY).sync()
        // The old journal is gone for good before the new checkpoint can be
        // found: replayed over it, its records (some dropped by the catch-up)
        // would give another namespace. A crash before the new checkpoint is
        // in place leaves the old one, from which the next catch-up starts.
        let replaced = partial ? ["journal", "checkpoint.warm"]
            : ["checkpoint", "journal", "files", "epoch", "checkpoint.warm", "files-unverified"]
        for name in replaced { try Disk.removeTree(directory + "/" + name) }
        try Disk.syncDirectory(directory)
        if partial {
            for name in names { try Disk.rename(incoming + "/files/" + name, to: directory + "/files/" + name) }
            try Disk.syncDirectory(directory + "/files")
        } else {
            // The directory moves whole: its own entries must be durable first.
            try Disk.syncDirectory(incoming + "/files")
            try Disk.rename(incoming + "/files", to: directory + "/files")
        }
        try Disk.rename(incoming + "/checkpoint", to: directory + "/checkpoint")
        // Its directory sync also makes the checkpoint's and the files' new names durable.
        try Disk.writeAtomically(Array("\(epoch)\n".utf8), to: directory + "/epoch", directory: directory)
    }
}
