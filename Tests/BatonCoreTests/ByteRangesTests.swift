// Goal: ByteRanges answers overlap questions exactly, which decides whether a
// write may skip the journal. Method: compare with a brute-force set of bytes
// over seeded random inserts and queries.
@testable import BatonCore
import XCTest

final class ByteRangesTests: XCTestCase {
    func testMergesAdjacentAndOverlappingRanges() {
        var set = ByteRanges()
        set.insert(10..<20)
        set.insert(30..<40)
        set.insert(20..<25)
        XCTAssertEqual(set.ranges, [10..<25, 30..<40])
        set.insert(5..<35)
        XCTAssertEqual(set.ranges, [5..<40])
        XCTAssertTrue(set.overlaps(39..<50))
        XCTAssertFalse(set.overlaps(40..<50))
        XCTAssertFalse(set.overlaps(0..<5))
        XCTAssertFalse(set.overlaps(7..<7))
    }

    func testAgreesWithABruteForceModel() {
        for seed in UInt64(1)...40 {
            var generator = SplitMix64(seed: seed)
            var set = ByteRanges()
            var bytes = Set<UInt64>()
            for _ in 0..<60 {
                let start = generator.next() % 200
                let range = start..<(start + generator.next() % 20)
                if generator.next() % 2 == 0 {
                    set.insert(range)
                    bytes.formUnion(range)
                } else {
                    XCTAssertEqual(set.overlaps(range), !bytes.isDisjoint(with: range), "seed \(seed), \(range)")
                }
            }
            XCTAssertEqual(Set(set.ranges.flatMap { Array($0) }), bytes, "seed \(seed)")
            for (a, b) in zip(set.ranges, set.ranges.dropFirst()) {
                XCTAssertLessThan(a.upperBound, b.lowerBound, "seed \(seed): ranges not merged")
            }
        }
    }

    func testGapsAndCutsOfARangeSet() {
        var ranges = ByteRanges()
        ranges.insert(10..<20)
        ranges.insert(30..<40)
        XCTAssertEqual(ranges.gaps(in: 0..<50), [0..<10, 20..<30, 40..<50])
        XCTAssertEqual(ranges.gaps(in: 15..<35), [20..<30])
        XCTAssertEqual(ranges.gaps(in: 12..<18), [])
        ranges.removeAll(from: 15)
        XCTAssertEqual(ranges.ranges, [10..<15])
    }

    /// Replay's truncations (see `ReplayCuts`): what the lowest cut cut and
    /// no later write put back reads as zeros; a later cut forgets the
    /// writes past it; a removed file has nothing left to zero.
    func testReplayZerosOnlyWhatACutCutAndNoLaterWriteRewrote() {
        var cuts = ReplayCuts()
        cuts.wrote(7, 0..<100)  // before any cut: the data file holds it, the cut decides
        cuts.truncated(7, to: 10)
        cuts.truncated(7, to: 150)
        cuts.wrote(7, 20..<120)
        XCTAssertEqual(cuts.zeroRanges(7, fileEnd: 300), [10..<20, 120..<300])
        cuts.truncated(7, to: 50)
        XCTAssertEqual(cuts.zeroRanges(7, fileEnd: 300), [10..<20, 50..<300])
        XCTAssertEqual(cuts.zeroRanges(7, fileEnd: 5), [])
        XCTAssertEqual(cuts.zeroRanges(8, fileEnd: 300), [], "a file never cut")
        cuts.removed(7)
        XCTAssertEqual(cuts.zeroRanges(7, fileEnd: 300), [])
    }
}
