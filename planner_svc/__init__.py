"""The planner service: graph passes, lowering to an ExecutionPlan, and the job's task graph."""
