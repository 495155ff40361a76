"""Stopping a `--mode=serve` subprocess (the load benchmark and the browser test start one)."""
import subprocess


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
  """SIGTERM (uvicorn shuts down cleanly), then SIGKILL if it has not exited."""
  proc.terminate()
  try:
    proc.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    proc.kill()
