// Vitest config for the Durable Streams server conformance suite.
//
// The suite (npm @durable-streams/server-conformance-tests) only exports
// runConformanceTests(); its own CLI points vitest at a file inside node_modules, which
// vitest's default `exclude` skips ("No test files found"). So the one test file lives
// here, at the project root, and imports the suite. tests/durable_streams/runner.py
// copies this directory next to a cached node_modules and runs `vitest run`.
import { defineConfig } from "vitest/config"

export default defineConfig({
  // Vite's cache goes beside the run, not into the shared node_modules.
  cacheDir: ".vite",
  test: {
    include: ["conformance.test.mjs"],
    // The suite sets its own timeouts on the slow tests (long-poll: longPollTimeoutMs +
    // 1 s, TTL: several seconds); everything else keeps vitest's defaults, as upstream.
    watch: false,
    passWithNoTests: false,
    // Test names are the contract with runner.py: never retry, so a flaky failure
    // shows as a failure.
    retry: 0,
  },
})
