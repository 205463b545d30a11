"""The comparison study (single-task, plain MTL, coupled variants, oracle) and its report."""
