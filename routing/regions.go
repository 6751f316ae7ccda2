package routing

import (
	"fmt"
	"math"
	"regexp"
)

// Region is one entry of the region catalog: where a region code is on
// the map. Region codes are the three-letter codes Fly.io uses (mostly
// IATA airport codes).
type Region struct {
	// City and country the region serves, for people reading configs
	// and logs.
	City string `json:"city,omitempty"`

	// ISO 3166-1 alpha-2 country code, lower case (e.g. "us").
	Country string `json:"country,omitempty"`

	// Continent code: one of af, an, as, eu, na, oc, sa.
	Continent string `json:"continent,omitempty"`

	// Latitude and longitude in degrees, used to rank regions by
	// great-circle distance from the edge.
	Latitude  float64 `json:"latitude,omitempty"`
	Longitude float64 `json:"longitude,omitempty"`
}

// builtinRegions lists every public Fly.io region code, including the
// regions Fly.io has since retired from new deployments (machines that
// still run there keep their code).
var builtinRegions = map[string]Region{
	"ams": {City: "Amsterdam, Netherlands", Country: "nl", Continent: "eu", Latitude: 52.31, Longitude: 4.76},
	"arn": {City: "Stockholm, Sweden", Country: "se", Continent: "eu", Latitude: 59.65, Longitude: 17.92},
	"atl": {City: "Atlanta, Georgia (US)", Country: "us", Continent: "na", Latitude: 33.64, Longitude: -84.43},
	"bog": {City: "Bogotá, Colombia", Country: "co", Continent: "sa", Latitude: 4.70, Longitude: -74.15},
	"bom": {City: "Mumbai, India", Country: "in", Continent: "as", Latitude: 19.09, Longitude: 72.87},
	"bos": {City: "Boston, Massachusetts (US)", Country: "us", Continent: "na", Latitude: 42.37, Longitude: -71.01},
	"cdg": {City: "Paris, France", Country: "fr", Continent: "eu", Latitude: 49.01, Longitude: 2.55},
	"den": {City: "Denver, Colorado (US)", Country: "us", Continent: "na", Latitude: 39.86, Longitude: -104.67},
	"dfw": {City: "Dallas, Texas (US)", Country: "us", Continent: "na", Latitude: 32.90, Longitude: -97.04},
	"ewr": {City: "Secaucus, NJ (US)", Country: "us", Continent: "na", Latitude: 40.69, Longitude: -74.17},
	"eze": {City: "Ezeiza, Argentina", Country: "ar", Continent: "sa", Latitude: -34.82, Longitude: -58.54},
	"fra": {City: "Frankfurt, Germany", Country: "de", Continent: "eu", Latitude: 50.03, Longitude: 8.57},
	"gdl": {City: "Guadalajara, Mexico", Country: "mx", Continent: "na", Latitude: 20.52, Longitude: -103.31},
	"gig": {City: "Rio de Janeiro, Brazil", Country: "br", Continent: "sa", Latitude: -22.81, Longitude: -43.25},
	"gru": {City: "Sao Paulo, Brazil", Country: "br", Continent: "sa", Latitude: -23.44, Longitude: -46.47},
	"hkg": {City: "Hong Kong, Hong Kong", Country: "hk", Continent: "as", Latitude: 22.31, Longitude: 113.91},
	"iad": {City: "Ashburn, Virginia (US)", Country: "us", Continent: "na", Latitude: 38.94, Longitude: -77.46},
	"jnb": {City: "Johannesburg, South Africa", Country: "za", Continent: "af", Latitude: -26.14, Longitude: 28.25},
	"lax": {City: "Los Angeles, California (US)", Country: "us", Continent: "na", Latitude: 33.94, Longitude: -118.41},
	"lhr": {City: "London, United Kingdom", Country: "gb", Continent: "eu", Latitude: 51.47, Longitude: -0.45},
	"maa": {City: "Chennai (Madras), India", Country: "in", Continent: "as", Latitude: 12.99, Longitude: 80.17},
	"mad": {City: "Madrid, Spain", Country: "es", Continent: "eu", Latitude: 40.49, Longitude: -3.57},
	"mia": {City: "Miami, Florida (US)", Country: "us", Continent: "na", Latitude: 25.80, Longitude: -80.29},
	"nrt": {City: "Tokyo, Japan", Country: "jp", Continent: "as", Latitude: 35.77, Longitude: 140.39},
	"ord": {City: "Chicago, Illinois (US)", Country: "us", Continent: "na", Latitude: 41.98, Longitude: -87.90},
	"otp": {City: "Bucharest, Romania", Country: "ro", Continent: "eu", Latitude: 44.57, Longitude: 26.10},
	"phx": {City: "Phoenix, Arizona (US)", Country: "us", Continent: "na", Latitude: 33.43, Longitude: -112.01},
	"qro": {City: "Querétaro, Mexico", Country: "mx", Continent: "na", Latitude: 20.62, Longitude: -100.19},
	"scl": {City: "Santiago, Chile", Country: "cl", Continent: "sa", Latitude: -33.39, Longitude: -70.79},
	"sea": {City: "Seattle, Washington (US)", Country: "us", Continent: "na", Latitude: 47.45, Longitude: -122.31},
	"sin": {City: "Singapore, Singapore", Country: "sg", Continent: "as", Latitude: 1.36, Longitude: 103.99},
	"sjc": {City: "San Jose, California (US)", Country: "us", Continent: "na", Latitude: 37.36, Longitude: -121.93},
	"syd": {City: "Sydney, Australia", Country: "au", Continent: "oc", Latitude: -33.95, Longitude: 151.18},
	"waw": {City: "Warsaw, Poland", Country: "pl", Continent: "eu", Latitude: 52.17, Longitude: 20.97},
	"yul": {City: "Montreal, Canada", Country: "ca", Continent: "na", Latitude: 45.47, Longitude: -73.74},
	"yyz": {City: "Toronto, Canada", Country: "ca", Continent: "na", Latitude: 43.68, Longitude: -79.63},
}

// continents are the continent codes a region may carry. In a
// Fly-Prefer-Region list a two-letter entry that is a continent code
// means the continent, even where the same letters are also a country
// code (na, sa, af, as).
var continents = map[string]bool{"af": true, "an": true, "as": true, "eu": true, "na": true, "oc": true, "sa": true}

var (
	regionCodeRE  = regexp.MustCompile(`^[a-z]{3}$`)
	countryCodeRE = regexp.MustCompile(`^[a-z]{2}$`)
)

// validate checks one catalog entry.
func (r Region) validate(code string) error {
	if !regionCodeRE.MatchString(code) {
		return fmt.Errorf("regions: code %q: must be three lower-case letters", code)
	}
	if !countryCodeRE.MatchString(r.Country) {
		return fmt.Errorf("regions: %s: country %q: must be a lower-case ISO 3166-1 alpha-2 code", code, r.Country)
	}
	if !continents[r.Continent] {
		return fmt.Errorf("regions: %s: continent %q: must be one of af, an, as, eu, na, oc, sa", code, r.Continent)
	}
	if r.Latitude < -90 || r.Latitude > 90 {
		return fmt.Errorf("regions: %s: latitude %v: must be within [-90, 90]", code, r.Latitude)
	}
	if r.Longitude < -180 || r.Longitude > 180 {
		return fmt.Errorf("regions: %s: longitude %v: must be within [-180, 180]", code, r.Longitude)
	}
	return nil
}

// distanceKm is the great-circle (haversine) distance between two regions.
func distanceKm(a, b Region) float64 {
	const earthRadiusKm = 6371.0
	rad := func(d float64) float64 { return d * math.Pi / 180 }
	dLat := rad(b.Latitude - a.Latitude)
	dLon := rad(b.Longitude - a.Longitude)
	h := math.Sin(dLat/2)*math.Sin(dLat/2) +
		math.Cos(rad(a.Latitude))*math.Cos(rad(b.Latitude))*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * earthRadiusKm * math.Asin(math.Min(1, math.Sqrt(h)))
}
