"""The invitations service's own Prometheus series, registered in the runtime's registry next to the shared ones."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.invitations.admission import RosterAdmission


class AdmissionCollector(Collector):
    """roster_lines_in_flight{lane}, roster_lines_budget{lane}, roster_admissions_refused_total{work}: read at each
    scrape from the admission itself, which stays free of Prometheus."""

    def __init__(self, admission: RosterAdmission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        lanes = {"large": self.admission.large, "small": self.admission.small}
        in_flight = GaugeMetricFamily(
            "roster_lines_in_flight", "Roster lines being worked on now (preview, send, resend)", labels=["lane"]
        )
        budget = GaugeMetricFamily(
            "roster_lines_budget",
            "Room for roster lines: ROSTER_LINES_IN_FLIGHT, and the small rosters' lane",
            labels=["lane"],
        )
        for name, lane in lanes.items():
            in_flight.add_metric([name], lane.held)
            budget.add_metric([name], lane.capacity)
        refused = CounterMetricFamily(
            "roster_admissions_refused", "Rosters answered 503: no room within the wait", labels=["work"]
        )
        for work, count in self.admission.refused.items():
            refused.add_metric([work], count)
        yield from (in_flight, budget, refused)
