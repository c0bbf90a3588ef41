"""Prefect deployments: what runs on a schedule."""
