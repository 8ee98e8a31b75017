/// A set of byte ranges of one file, kept merged and sorted.
///
/// The store uses it to remember where a file was written by *immediate*
/// writes (data carried in the journal) since the last checkpoint. Replay
/// re-applies those writes in order; that is only correct if no later
/// *indirect* write (data in the data file only) overlaps them, so a write
/// that overlaps such a range is made immediate too.
public struct ByteRanges: Hashable, Sendable {
    /// Sorted, non-overlapping, non-adjacent half-open ranges.
    public private(set) var ranges: [Range<UInt64>] = []

    public init() {}

    public var count: Int { ranges.count }

    public func overlaps(_ range: Range<UInt64>) -> Bool {
        guard !range.isEmpty else { return false }
        let index = firstIndex(endingAfter: range.lowerBound)
        return index < ranges.count && ranges[index].lowerBound < range.upperBound
    }

    public mutating func insert(_ range: Range<UInt64>) {
        guard !range.isEmpty else { return }
        var start = firstIndex(endingAfter: range.lowerBound)
        if start > 0 && ranges[start - 1].upperBound == range.lowerBound { start -= 1 }
        var end = start
        var merged = range
        while end < ranges.count && ranges[end].lowerBound <= merged.upperBound {
            merged = min(merged.lowerBound, ranges[end].lowerBound)..<max(merged.upperBound, ranges[end].upperBound)
            end += 1
        }
        ranges.replaceSubrange(start..<end, with: [merged])
    }

    /// Forgets everything at or past `offset` (a truncation to it).
    public mutating func removeAll(from offset: UInt64) {
        ranges = ranges.compactMap { $0.lowerBound >= offset ? nil : $0.lowerBound..<Swift.min($0.upperBound, offset) }
    }

    /// The parts of `range` that no range of the set covers.
    public func gaps(in range: Range<UInt64>) -> [Range<UInt64>] {
        var gaps: [Range<UInt64>] = []
        var next = range.lowerBound
        for covered in ranges where covered.upperBound > next && covered.lowerBound < range.upperBound {
            if covered.lowerBound > next { gaps.append(next..<covered.lowerBound) }
            next = Swift.max(next, covered.upperBound)
        }
        if next < range.upperBound { gaps.append(next..<range.upperBound) }
        return gaps
    }

    /// The first range whose end lies after `offset`.
    private func firstIndex(endingAfter offset: UInt64) -> Int {
        ranges.partitioningIndex { $0.upperBound > offset }
    }
}

extension Array {
    /// Binary search in an array partitioned by `belongsInSecondPart` (false
    /// first, then true): the index of the first element of the second part.
    func partitioningIndex(where belongsInSecondPart: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if belongsInSecondPart(self[mid]) { high = mid } else { low = mid + 1 }
        }
        return low
    }
}
