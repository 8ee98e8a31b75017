/// What a replay of the journal does with its truncations.
///
/// A truncation is carried out on the data file after its record, so
/// replay must carry out the ones a crash cut off. But carrying out each one
/// again, in order, destroyed what later large (indirect) writes put in the
/// data file: their data is in no record, so nothing wrote it back (an
/// fsync'd write lost at every restart before a checkpoint). The data file
/// holds every write that came before a crash, in order, and a truncation
/// before them only if it reached the disk. So replay keeps, per file, the
/// lowest size it was cut to and what was written after that cut; at the
/// end, the bytes past the cut that nothing rewrote are zeroed (what the
/// truncation did to them), and the rest stays.
public struct ReplayCuts: Sendable {
    private struct Cut: Sendable {
        var size: UInt64
        var rewritten = ByteRanges()
    }

    private var cuts: [InodeNumber: Cut] = [:]

    public init() {}

    public mutating func truncated(_ ino: InodeNumber, to size: UInt64) {
        guard var cut = cuts[ino] else {
            cuts[ino] = Cut(size: size)
            return
        }
        // Past `size` everything is zeros again, rewritten or not.
        cut.size = min(cut.size, size)
        cut.rewritten.removeAll(from: size)
        cuts[ino] = cut
    }

    /// A write replayed (immediate: written again) or kept (indirect: in the data file).
    public mutating func wrote(_ ino: InodeNumber, _ range: Range<UInt64>) {
        cuts[ino]?.rewritten.insert(range)
    }

    public mutating func removed(_ ino: InodeNumber) {
        cuts[ino] = nil
    }

    public var inodes: [InodeNumber] { cuts.keys.sorted() }

    /// The byte ranges of `ino`'s data file, `fileEnd` bytes long, that must read as zeros.
    public func zeroRanges(_ ino: InodeNumber, fileEnd: UInt64) -> [Range<UInt64>] {
        guard let cut = cuts[ino], cut.size < fileEnd else { return [] }
        return cut.rewritten.gaps(in: cut.size..<fileEnd)
    }
}
