// The official Durable Streams server conformance suite against DS_BASE_URL, e.g.
//   DS_BASE_URL=http://127.0.0.1:4437 npx vitest run
// Optional DS_LONG_POLL_TIMEOUT_MS tells the suite the server's long-poll timeout (the
// suite's default assumes <= 20000 ms and gives long-poll tests that + 1 s).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DS_BASE_URL
if (!baseUrl) {
  throw new Error("DS_BASE_URL is not set (the server under test, e.g. http://127.0.0.1:4437)")
}
const options = { baseUrl }
if (process.env.DS_LONG_POLL_TIMEOUT_MS) {
  options.longPollTimeoutMs = Number(process.env.DS_LONG_POLL_TIMEOUT_MS)
}

runConformanceTests(options)
