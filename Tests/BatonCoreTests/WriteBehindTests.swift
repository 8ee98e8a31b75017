// Goal: a write answered before the server has it is never lost silently:
// its error reaches the application through the file's next write, fsync or
// close, and close/fsync wait for every such write of the file; the window
// bounds what is in flight.
// Method: the pure WriteBehind state driven as the mount drives it, with
// waiters that record what they were told.
import BatonCore
import XCTest

final class WriteBehindTests: XCTestCase {
    typealias State = WriteBehind<String>

    func testTheWindowBoundsTheBytesInFlight() {
        var state = State(windowBytes: 3 << 20)
        XCTAssertTrue(state.admit(7, bytes: 1 << 20))
        XCTAssertTrue(state.admit(7, bytes: 2 << 20))
        XCTAssertFalse(state.admit(8, bytes: 1), "a full window makes the write wait for its own reply")
        _ = state.finished(7, bytes: 1 << 20, error: nil)
        XCTAssertTrue(state.admit(8, bytes: 1 << 20))
        XCTAssertEqual(state.bytesInFlight, 3 << 20)
    }

    func testAZeroWindowAnswersNothingEarly() {
        var state = State(windowBytes: 0)
        XCTAssertFalse(state.admit(7, bytes: 1))
        XCTAssertTrue(state.isSettled)
    }

    func testCloseWaitsForTheFilesWritesAndReportsTheirFirstError() {
        var state = State(windowBytes: 8 << 20)
        XCTAssertTrue(state.admit(7, bytes: 10))
        XCTAssertTrue(state.admit(7, bytes: 10))
        XCTAssertEqual(state.settle(7, "close"), .later)
        XCTAssertFalse(state.isSettled)
        XCTAssertEqual(state.finished(7, bytes: 10, error: ENOSPC).waiters, [], "one write of the file is still in flight")
        let (waiters, error) = state.finished(7, bytes: 10, error: EIO)
        XCTAssertEqual(waiters, ["close"])
        XCTAssertEqual(error, ENOSPC, "the first failure is what the application hears")
        XCTAssertTrue(state.isSettled)
        XCTAssertEqual(state.settle(7, "close again"), .now(nil), "an error is reported once")
    }

    func testAnErrorWithNobodyWaitingGoesToTheFilesNextWrite() {
        var state = State(windowBytes: 8 << 20)
        XCTAssertTrue(state.admit(7, bytes: 10))
        XCTAssertEqual(state.finished(7, bytes: 10, error: ENOSPC).waiters, [])
        XCTAssertNil(state.takeError(8), "other files are not concerned")
        XCTAssertEqual(state.takeError(7), ENOSPC)
        XCTAssertNil(state.takeError(7))
    }

    func testASettledFileIsAnsweredAtOnce() {
        var state = State(windowBytes: 8 << 20)
        XCTAssertEqual(state.settle(7, "fsync"), .now(nil))
        XCTAssertTrue(state.admit(8, bytes: 10))
        XCTAssertEqual(state.settle(7, "fsync"), .now(nil), "another file's writes do not hold this one")
        XCTAssertTrue(state.admit(7, bytes: 10))
        XCTAssertEqual(state.finished(7, bytes: 10, error: EIO).waiters, [])
        XCTAssertEqual(state.settle(7, "fsync"), .now(EIO))
    }
}
