// Goal: a window is fetched whole at its second small miss, not its first
// (scattered reads fetch no more than they read); and it reaches the page cache only
// when no byte of it can be older than what the cache holds or what this
// mount wrote: never while a change of the file through the mount is under
// way, never when one began after the fetch went out; and a change that
// begins during a store waits for it.
// Method: the pure ReadPrefetch state driven as the mount drives it.
import BatonCore
import XCTest

final class ReadPrefetchTests: XCTestCase {
    typealias State = ReadPrefetch<String>
    let window: UInt64 = 256 << 10

    func testASecondMissInAWindowFetchesTheWindowOnce() throws {
        var state = State(windowBytes: window)
        XCTAssertNil(state.fetch(7, offset: window + 4096, size: 4096), "a window's first miss reads only its page")
        let fetch = try XCTUnwrap(state.fetch(7, offset: window + 8192, size: 4096))
        XCTAssertEqual(fetch.start, window)
        XCTAssertEqual(fetch.length, UInt32(window))
        XCTAssertNil(state.fetch(7, offset: window + 4096, size: 4096), "a window on its way is not fetched twice")
        XCTAssertNil(state.fetch(7, offset: 0, size: 4096))
        XCTAssertNotNil(state.fetch(7, offset: 0, size: 4096), "another window of the file is")
        XCTAssertTrue(state.beginStore(fetch))
        XCTAssertEqual(state.stored(7), [])
    }

    func testScatteredReadsRememberABoundedNumberOfWindows() {
        var state = State(windowBytes: window)
        for index in 0..<UInt64(State.windowsRemembered) { XCTAssertNil(state.fetch(7, offset: index * window, size: 4096)) }
        XCTAssertNil(state.fetch(7, offset: 1000 * window, size: 4096), "one window too many: all are forgotten")
        XCTAssertNil(state.fetch(7, offset: 0, size: 4096), "forgotten: a first miss again")
        XCTAssertNotNil(state.fetch(7, offset: 1000 * window, size: 4096))
        state.forget(7)
        XCTAssertEqual(state.filesTracked, 0, "a file the kernel forgot keeps no state")
    }

    func testLargeReadsReadsAcrossWindowsAndAZeroWindowFetchNothing() {
        var state = State(windowBytes: window)
        XCTAssertNil(state.fetch(7, offset: 0, size: 128 << 10), "the kernel's readahead needs no help")
        XCTAssertNil(state.fetch(7, offset: window - 4096, size: 8192), "a read across two windows")
        var off = State(windowBytes: 0)
        XCTAssertNil(off.fetch(7, offset: 0, size: 4096))
    }

    func testNoWindowIsFetchedWhileTheFileMayChangeThroughTheMount() {
        var state = State(windowBytes: window)
        XCTAssertTrue(state.beginChange(7, "open for writing"))
        XCTAssertNil(state.fetch(7, offset: 0, size: 4096))
        XCTAssertNil(state.fetch(7, offset: 0, size: 4096), "not at a second miss either")
        XCTAssertNil(state.fetch(8, offset: 0, size: 4096))
        XCTAssertNotNil(state.fetch(8, offset: 0, size: 4096), "other files are not held back")
        XCTAssertTrue(state.beginChange(7, "truncate"))
        state.endChange(7)
        XCTAssertNil(state.fetch(7, offset: 0, size: 4096), "one change is still under way")
        state.endChange(7)
        XCTAssertNil(state.fetch(7, offset: 0, size: 4096))
        XCTAssertNotNil(state.fetch(7, offset: 0, size: 4096))
    }

    func testAWindowFetchedBeforeAChangeIsNotStored() throws {
        var state = State(windowBytes: window)
        _ = state.fetch(7, offset: 0, size: 4096)
        let fetch = try XCTUnwrap(state.fetch(7, offset: 0, size: 4096))
        XCTAssertTrue(state.beginChange(7, "write"))
        XCTAssertFalse(state.beginStore(fetch), "a change under way")
        let again = try XCTUnwrap({ () -> State.Fetch? in
            state.endChange(7)
            _ = state.fetch(7, offset: 0, size: 4096)
            return state.fetch(7, offset: 0, size: 4096)
        }())
        XCTAssertTrue(state.beginChange(7, "truncate"))
        state.endChange(7)
        XCTAssertFalse(state.beginStore(again), "a change began and ended while the window was on its way")
    }

    func testAChangeThatBeginsDuringAStoreWaitsForIt() throws {
        var state = State(windowBytes: window)
        _ = state.fetch(7, offset: 0, size: 4096)
        let fetch = try XCTUnwrap(state.fetch(7, offset: 0, size: 4096))
        XCTAssertTrue(state.beginStore(fetch))
        XCTAssertFalse(state.beginChange(7, "open for writing"))
        XCTAssertFalse(state.beginChange(7, "lock"))
        _ = state.fetch(7, offset: window, size: 4096)
        XCTAssertNil(state.fetch(7, offset: window, size: 4096), "nor does a fetch start during the store")
        XCTAssertEqual(state.stored(7), ["open for writing", "lock"])
        XCTAssertNil(state.fetch(7, offset: window, size: 4096), "the changes are under way now")
        state.endChange(7)
        state.endChange(7)
        state.forget(7)
        XCTAssertEqual(state.filesTracked, 0)
    }

    func testAFailedFetchMayBeTriedAgain() throws {
        var state = State(windowBytes: window)
        _ = state.fetch(7, offset: 0, size: 4096)
        let fetch = try XCTUnwrap(state.fetch(7, offset: 0, size: 4096))
        state.abandon(fetch)
        XCTAssertEqual(state.filesTracked, 0, "nothing left behind")
        _ = state.fetch(7, offset: 0, size: 4096)
        XCTAssertNotNil(state.fetch(7, offset: 0, size: 4096), "the window may be fetched again")
    }
}
