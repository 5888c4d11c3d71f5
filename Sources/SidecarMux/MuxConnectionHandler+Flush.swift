import NIOCore

extension MuxConnectionHandler {
    /// The last frames of a pump go out once the event loop has handled every I/O event of its
    /// current turn (a task, run before the loop polls again): streams that became ready
    /// together then share one TLS record and one write(2). With 16 busy connections, a pair's
    /// writes per keep-alive request fell from 4.0 to 2.6 and its CPU per request by a fifth.
    /// A lone stream has nothing to share with, and the task costs ~3K instructions (5 % more
    /// per request on one keep-alive connection): its frames are flushed at once. The owed bytes
    /// add up across a turn's pumps, so many busy streams still flush every `sendChunk`.
    func flushAtEndOfTurn(_ context: ChannelHandlerContext) {
        guard streams.count > 1 else {
            flushNow(context)
            return
        }
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            if self.unflushedBytes > 0, let context = self.context { self.flushNow(context) }
        }
    }

    func flushNow(_ context: ChannelHandlerContext) {
        unflushedBytes = 0
        context.flush()
        if case .queued = windowTuning.sample { windowTuning.flushed(now: clock()) }
    }
}
